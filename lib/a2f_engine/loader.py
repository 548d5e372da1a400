"""``load_engine``: the inference server's way to open a model's published engine."""

from __future__ import annotations

import logging

from a2f_engine.base import Engine
from a2f_engine.errors import EngineLoadError
from a2f_engine.trt_flags import load_trt_info
from a2f_volume.layout import BACKEND_ONNXRUNTIME, BACKEND_TENSORRT, ModelPaths

logger = logging.getLogger(__name__)


def load_engine(model_paths: ModelPaths, backend: str, max_batch: int | None = None,
                intra_op_threads: int = 0, workers: int | None = None) -> Engine:
    """Open ``network.trt`` / ``network.ort`` of a model folder.

    ``max_batch`` (the scheduler's batch; TensorRT sizes its buffers for it) defaults to
    ``MAX_BATCH_SIZE`` of the folder's ``trt_info.json``. ``workers``: the inference threads
    that run batches at once (TensorRT makes one execution context each; None grows the pool
    on demand up to a small bound). Whether
    the engine may be served at all is decided beforehand by
    :func:`a2f_volume.engine_record.valid_engine`; this function only opens it.
    """
    path = model_paths.engine(backend)
    if not path.is_file():
        raise EngineLoadError(f"no {backend} engine at {path}")
    spec = load_trt_info(model_paths.folder) if (
        max_batch is None or backend == BACKEND_TENSORRT) else None
    if max_batch is None:
        assert spec is not None
        max_batch = spec.max_batch
    if backend == BACKEND_ONNXRUNTIME:
        from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine

        try:
            # The file is already optimised for this machine: do not optimise again.
            return OnnxRuntimeEngine(path, max_batch=max_batch,
                                     intra_op_threads=intra_op_threads, optimize=False)
        except Exception as err:  # ORT's pybind exception types
            raise EngineLoadError(f"ONNX Runtime cannot load {path}: {err}") from err
    if backend == BACKEND_TENSORRT:
        from a2f_engine.tensorrt_engine import TensorRTEngine

        assert spec is not None
        return TensorRTEngine(path, max_batch=max_batch, workers=workers,
                              version_compatible=spec.version_compatible)
    raise ValueError(f"unknown backend {backend!r}")
