"""ONNX Runtime engine: the CPU backend, and the reference TensorRT engines are checked against."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from a2f_engine.base import TensorSpec

_ORT_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
              "tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32)}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, np.dtype(np.float32)), shape)


def session_options(intra_op_threads: int = 0, optimized_path: str | None = None,
                    optimize: bool = True) -> ort.SessionOptions:
    """Session options used everywhere so that build-time and run-time sessions agree."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # Worker threads sleep between runs instead of spinning: a server runs many small
    # batches and the spinning threads would take the CPU that post-processing and the
    # gRPC layer need (measured: about twice the frames per CPU-second at real time).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        so.optimized_model_filepath = optimized_path
    return so


class OnnxRuntimeEngine:
    """Runs an ONNX (or ORT-optimised ONNX) file on the CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], max_batch: int = 64,
                 intra_op_threads: int = 0, optimize: bool = True) -> None:
        self.path = os.fspath(path)
        self._session = ort.InferenceSession(
            self.path, sess_options=session_options(intra_op_threads, optimize=optimize),
            providers=["CPUExecutionProvider"])
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self.max_batch = max_batch

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, feeds)
        return {name: np.asarray(r) for name, r in zip(self._output_names, results, strict=True)}

    def close(self) -> None:
        # Dropping the session frees its arena; keep the object usable for introspection.
        self._session = None
