"""ONNX Runtime build step: the ONNX model optimised for this machine, saved in ORT format.

ONNX Runtime applies its graph optimisations (constant folding, fusions, layout changes for
the CPU's vector units) at every session start; saving the optimised graph once makes later
starts cheaper and pins exactly what was verified. The result is machine-specific (it may
contain fused contrib operators chosen for this CPU), hence the CPU features in the target.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from a2f_engine.errors import EngineBuildError
from a2f_engine.onnxruntime_engine import session_options

logger = logging.getLogger(__name__)


def build_ort_model(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                    intra_op_threads: int = 0) -> None:
    """Write the optimised model of ``onnx_path`` to ``out_path`` (a temporary name).

    Raises :class:`EngineBuildError` naming the file and ONNX Runtime's reason.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX not found: {onnx_path}")
    so = session_options(intra_op_threads, optimized_path=os.fspath(out_path))
    # ORT format (flatbuffer, what ``network.ort`` means to ONNX Runtime); the temporary name
    # has no extension, so the format is stated explicitly.
    so.add_session_config_entry("session.save_model_format", "ORT")
    try:
        sess = ort.InferenceSession(os.fspath(onnx_path), sess_options=so,
                                    providers=["CPUExecutionProvider"])
    except MemoryError as err:
        raise EngineBuildError(f"{onnx_path}: out of memory while optimising ({err})") from err
    except Exception as err:  # ORT raises its own pybind exception types (Fail, InvalidGraph...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EngineBuildError(f"{onnx_path}: ONNX Runtime rejected the model: {reason}") from err
    del sess
    if not out_path.is_file() or out_path.stat().st_size == 0:
        raise EngineBuildError(f"{onnx_path}: ONNX Runtime wrote no optimised model")
