"""TensorRT engine for the inference server: plan -> execution context, CUDA via cuda-python.

Tensors are bound by name with a dynamic batch axis; device buffers are allocated once at the
profile's maximum shapes, inputs are copied on a dedicated stream, ``execute_async_v3`` runs,
outputs are copied back and the stream is synchronised. Outputs match
:class:`~a2f_engine.onnxruntime_engine.OnnxRuntimeEngine` (dict of float32 arrays by name).

``run`` may be called from several threads at once (the scheduler's inference workers): each
thread gets its own execution context, CUDA stream and device buffers, made on its first call.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from a2f_engine.base import TensorSpec
from a2f_engine.errors import EngineLoadError

if TYPE_CHECKING:
    import tensorrt as trt

logger = logging.getLogger(__name__)


def _cuda(result: Any, what: str) -> Any:
    """Unwrap a cuda-python ``(err, value...)`` tuple, raising on error."""
    from cuda.bindings import runtime as cudart

    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    if err != cudart.cudaError_t.cudaSuccess:
        raise EngineLoadError(f"CUDA {what} failed: {getattr(err, 'name', err)}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


class TensorRTEngine:
    """Runs a serialised TensorRT plan on GPU 0."""

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike[str], max_batch: int | None = None) -> None:
        from cuda.bindings import runtime as cudart

        from a2f_engine.build_trt import dims_tuple, import_tensorrt, make_logger

        trt_mod = import_tensorrt()
        self.path = os.fspath(path)
        self._cudart = cudart
        self._trt_logger = make_logger(trt_mod)
        self._runtime: trt.Runtime = trt_mod.Runtime(self._trt_logger)
        with open(self.path, "rb") as f:
            plan = f.read()
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineLoadError(
                f"TensorRT could not deserialise {self.path}: the plan was built by another "
                "TensorRT version or for another GPU, or is corrupt (see [TRT] [E] above)")
        self._engine: trt.ICudaEngine = engine

        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        max_shapes: dict[str, tuple[int, ...]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt_mod.nptype(engine.get_tensor_dtype(name)))
            spec = TensorSpec(name, dtype, dims_tuple(engine.get_tensor_shape(name)))
            if engine.get_tensor_mode(name) == trt_mod.TensorIOMode.INPUT:
                inputs.append(spec)
                max_shapes[name] = dims_tuple(engine.get_tensor_profile_shape(name, 0)[2])
            else:
                outputs.append(spec)
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._max_shapes = max_shapes
        profile_max = min((max_shapes[s.name][s.batch_axis] for s in self.inputs
                           if s.batch_axis >= 0), default=1)
        self.max_batch = min(max_batch, profile_max) if max_batch else profile_max
        self._lock = threading.Lock()
        self._contexts: list[_Context] = []
        self._local = threading.local()
        self._context_for_thread()  # the first one now: a plan that cannot run fails here

    def _context_for_thread(self) -> _Context:
        ctx: _Context | None = getattr(self._local, "context", None)
        if ctx is None:
            with self._lock:
                ctx = _Context(self._engine, self.inputs, self.outputs, self._max_shapes,
                               self._cudart)
                self._contexts.append(ctx)
            self._local.context = ctx
            if len(self._contexts) > 1:
                logger.info("TensorRT engine %s: execution context %d for thread %s",
                            self.path, len(self._contexts), threading.current_thread().name)
        return ctx

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from a2f_engine.build_trt import dims_tuple

        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ctx = self._context_for_thread()
        context, stream = ctx.context, ctx.stream
        keep = []
        for spec in self.inputs:
            if spec.name not in feeds:
                raise ValueError(f"missing input {spec.name!r}; inputs are "
                                 f"{[s.name for s in self.inputs]}")
            arr = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
            if spec.batch_axis >= 0 and arr.shape[spec.batch_axis] > self.max_batch:
                raise ValueError(f"batch {arr.shape[spec.batch_axis]} of {spec.name!r} exceeds "
                                 f"max batch {self.max_batch}")
            if not context.set_input_shape(spec.name, arr.shape):
                raise ValueError(f"shape {arr.shape} of {spec.name!r} is outside the engine's "
                                 "optimisation profile")
            keep.append(arr)
            _cuda(cudart.cudaMemcpyAsync(ctx.buffers[spec.name], arr.ctypes.data, arr.nbytes,
                                         h2d, stream), f"copy of {spec.name} to device")
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError(f"TensorRT execution of {self.path} failed (see [TRT] [E])")
        results = {}
        for spec in self.outputs:
            out = np.empty(dims_tuple(context.get_tensor_shape(spec.name)), dtype=spec.dtype)
            _cuda(cudart.cudaMemcpyAsync(out.ctypes.data, ctx.buffers[spec.name], out.nbytes,
                                         d2h, stream), f"copy of {spec.name} to host")
            results[spec.name] = out
        _cuda(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        del keep
        return {k: v.astype(np.float32, copy=False) for k, v in results.items()}

    def close(self) -> None:
        with self._lock:
            contexts, self._contexts = self._contexts, []
        for ctx in contexts:
            ctx.close()


class _Context:
    """One execution context with its own CUDA stream and device buffers, sized for the
    profile's largest shapes (one per thread that runs the engine)."""

    def __init__(self, engine: trt.ICudaEngine, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], max_shapes: dict[str, tuple[int, ...]],
                 cudart: Any) -> None:
        from a2f_engine.build_trt import dims_tuple

        self._cudart = cudart
        context = engine.create_execution_context()
        if context is None:
            raise EngineLoadError("TensorRT could not create an execution context (out of "
                                  "device memory?)")
        self.context: trt.IExecutionContext = context
        self.buffers: dict[str, int] = {}
        self.stream: Any = None
        try:
            self.stream = _cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
            for name, shape in max_shapes.items():
                self.context.set_input_shape(name, shape)
            for spec in (*inputs, *outputs):
                shape = (max_shapes[spec.name] if spec in inputs
                         else dims_tuple(self.context.get_tensor_shape(spec.name)))
                nbytes = max(1, int(np.prod(shape)) * spec.dtype.itemsize)
                ptr = _cuda(cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes}) for {spec.name}")
                self.buffers[spec.name] = int(ptr)
                self.context.set_tensor_address(spec.name, int(ptr))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        cudart = self._cudart
        for ptr in self.buffers.values():
            cudart.cudaFree(ptr)
        self.buffers.clear()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
