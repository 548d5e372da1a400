"""TensorRT engine for the inference server: plan -> pooled execution contexts, CUDA via
cuda-python.

Tensors are bound by name with a dynamic batch axis. Runs check an execution context out of a
bounded pool (one per inference worker; a run waits for a free one up to a timeout) and check
it back in. Each context owns a CUDA stream, device buffers and pinned (page-locked) host
staging buffers, all sized for the batch the engine is opened with (the scheduler's batch,
not the profile's maximum): inputs are copied into the pinned buffers, uploaded on the
context's stream, ``execute_async_v3`` runs, outputs come back the same way and the stream is
synchronised. Outputs match :class:`~a2f_engine.onnxruntime_engine.OnnxRuntimeEngine` (dict
of float32 arrays by name).

Resident inputs (:meth:`TensorRTEngine.set_resident_input`) live in one device buffer that
every context binds read-only; they are uploaded once, never per run.

``close`` frees everything the engine created (contexts, streams, device and pinned buffers,
resident buffers, the engine and the runtime) but never what a running context uses: it waits
for checked-out contexts up to a bound, and what is still running after it is freed by its
own check-in (or stays allocated, with an error logged, if it never returns).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from a2f_engine.base import TensorSpec, check_resident_value
from a2f_engine.errors import EngineBusyError, EngineClosedError, EngineLoadError

if TYPE_CHECKING:
    import tensorrt as trt

logger = logging.getLogger(__name__)

#: Contexts a pool grows to when the number of workers is not given (one per worker that
#: runs at the same time; the server's automatic TensorRT plan uses 2).
DEFAULT_MAX_CONTEXTS = 4
#: How long a run waits for a free execution context before EngineBusyError.
CHECKOUT_TIMEOUT_S = 30.0
#: How long close() waits for running contexts before leaving their memory allocated.
CLOSE_TIMEOUT_S = 10.0


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


def _cuda_free(result: Any, what: str) -> None:
    """Check a release call's status; log (never raise: close must go on)."""
    try:
        _cuda(result, what)
    except EngineLoadError as err:
        logger.error("%s", err)


def _host_view(ptr: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
    """A numpy array over ``nbytes`` of pinned host memory at ``ptr``."""
    raw = (ctypes.c_byte * nbytes).from_address(ptr)
    return np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8).view(dtype)


class TensorRTEngine:
    """Runs a serialised TensorRT plan on GPU 0.

    ``max_batch``: the batch the caller runs (the scheduler's); buffers are sized for it and
    for the profile's maximum on every other dynamic axis. ``workers``: how many threads run
    batches at once; that many contexts are made now. None makes one now and adds more on
    demand up to :data:`DEFAULT_MAX_CONTEXTS`. ``version_compatible``: the plan was built
    with ``--versionCompatible`` (it carries host code, which the runtime must be allowed to
    run).
    """

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike[str], max_batch: int | None = None,
                 workers: int | None = None, version_compatible: bool = False,
                 checkout_timeout_s: float = CHECKOUT_TIMEOUT_S,
                 close_timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        from cuda.bindings import runtime as cudart

        from a2f_engine.build_trt import dims_tuple, import_tensorrt, make_logger

        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        trt_mod = import_tensorrt()
        self.path = os.fspath(path)
        self._cudart = cudart
        self._checkout_timeout_s = checkout_timeout_s
        self._close_timeout_s = close_timeout_s
        self._trt_logger = make_logger(trt_mod)
        self._runtime: trt.Runtime | None = trt_mod.Runtime(self._trt_logger)
        if version_compatible:
            # Version-compatible plans embed the lean runtime (host code); TensorRT refuses
            # to deserialise them unless this is set (trtexec does the same).
            self._runtime.engine_host_code_allowed = True
        with open(self.path, "rb") as f:
            plan = f.read()
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(plan)
        del plan
        if engine is None:
            self._runtime = None
            hint = ("" if version_compatible else "; a plan built with --versionCompatible "
                    "needs version_compatible=True")
            raise EngineLoadError(
                f"TensorRT could not deserialise {self.path}: the plan was built by another "
                f"TensorRT version or for another GPU, or is corrupt (see [TRT] [E] above)"
                f"{hint}")
        self._engine: trt.ICudaEngine | None = engine

        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        profile_min: dict[str, tuple[int, ...]] = {}
        profile_max: dict[str, tuple[int, ...]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt_mod.nptype(engine.get_tensor_dtype(name)))
            spec = TensorSpec(name, dtype, dims_tuple(engine.get_tensor_shape(name)))
            if engine.get_tensor_mode(name) == trt_mod.TensorIOMode.INPUT:
                inputs.append(spec)
                lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                profile_min[name], profile_max[name] = dims_tuple(lo), dims_tuple(hi)
            else:
                outputs.append(spec)
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._profile_min = profile_min
        self._profile_max = profile_max
        batch_max = min((profile_max[s.name][s.batch_axis] for s in self.inputs
                         if s.batch_axis >= 0), default=1)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = min(max_batch, batch_max) if max_batch else batch_max
        # Buffer shapes: the batch axis at max_batch, other dynamic axes at the profile max.
        self._buffer_shapes = {
            s.name: tuple(self.max_batch if i == s.batch_axis else profile_max[s.name][i]
                          for i in range(len(s.shape)))
            for s in self.inputs}

        self._cond = threading.Condition()
        self._closed = False
        self._contexts: list[_Context] = []  # every live context (free or checked out)
        self._free: list[_Context] = []
        self._busy = 0
        self._creating = 0
        self._max_contexts = workers if workers is not None else DEFAULT_MAX_CONTEXTS
        self._resident: dict[str, _Resident] = {}
        self._retired: list[_Resident] = []  # replaced resident buffers, freed at close
        self._resident_version = 0
        try:
            for _ in range(workers or 1):  # a plan that cannot run fails here, not mid-stream
                ctx = self._new_context()
                self._contexts.append(ctx)
                self._free.append(ctx)
        except BaseException:
            self._release_all()
            raise
        logger.info("TensorRT engine %s: %d execution context(s) (up to %d), batch %d "
                    "(profile max %d)", self.path, len(self._contexts), self._max_contexts,
                    self.max_batch, batch_max)

    # -- public -------------------------------------------------------------------------
    @property
    def contexts(self) -> int:
        """Execution contexts alive now (free and checked out)."""
        with self._cond:
            return len(self._contexts)

    def set_resident_input(self, name: str, value: np.ndarray) -> None:
        """Upload ``value`` once into one device buffer that every context binds for input
        ``name``; ``run`` no longer takes that input. Setting it again uploads the new value
        (the old buffer is kept until close: a context may still be reading it)."""
        specs = {s.name: s for s in self.inputs}
        if name not in specs:
            raise ValueError(f"resident input {name!r} is not an input of {self.path}; "
                             f"inputs are {sorted(specs)}")
        arr = check_resident_value(specs[name], value)
        lo, hi = self._profile_min[name], self._profile_max[name]
        if not all(a <= b <= c for a, b, c in zip(lo, arr.shape, hi, strict=True)):
            raise ValueError(f"resident input {name!r}: shape {arr.shape} is outside the "
                             f"engine's optimisation profile ({lo} .. {hi})")
        cudart = self._cudart
        with self._cond:
            if self._closed:
                raise EngineClosedError(f"TensorRT engine {self.path} is closed")
        ptr = int(_cuda(cudart.cudaMalloc(arr.nbytes), f"cudaMalloc({arr.nbytes}) for {name}"))
        try:
            _cuda(cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes,
                                    cudart.cudaMemcpyKind.cudaMemcpyHostToDevice),
                  f"upload of resident input {name}")
        except BaseException:
            _cuda_free(cudart.cudaFree(ptr), f"cudaFree of {name}")
            raise
        with self._cond:
            old = self._resident.get(name)
            if old is not None:
                self._retired.append(old)
            self._resident[name] = _Resident(name, ptr, tuple(arr.shape))
            self._resident_version += 1
        logger.info("TensorRT engine %s: input %s resident (%s, %d bytes, shared by every "
                    "context)", self.path, name, arr.shape, arr.nbytes)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctx, resident = self._checkout()
        try:
            return self._run_on(ctx, resident, feeds)
        finally:
            self._checkin(ctx)

    def close(self) -> None:
        """Free everything; waits up to ``close_timeout_s`` for contexts that are running.

        A context still running after that is not freed under it: its own check-in frees
        it (and, as the last one, the engine and the shared buffers); until then they stay
        allocated and an error is logged.
        """
        deadline = time.monotonic() + self._close_timeout_s
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            while self._busy or self._creating:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            busy = self._busy + self._creating
            idle = list(self._free)
            self._free.clear()
            for ctx in idle:
                self._contexts.remove(ctx)
        for ctx in idle:
            ctx.close()
        if busy:
            logger.error("TensorRT engine %s: %d execution context(s) still running %.0f s "
                         "after close; their memory, the engine and the shared buffers stay "
                         "allocated until they return", self.path, busy, self._close_timeout_s)
            return
        self._release_shared()

    # -- pool ---------------------------------------------------------------------------
    def _checkout(self) -> tuple[_Context, dict[str, _Resident]]:
        deadline = time.monotonic() + self._checkout_timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise EngineClosedError(f"TensorRT engine {self.path} is closed")
                if self._free:
                    ctx = self._free.pop()
                    try:
                        resident = self._bind_resident(ctx)
                    except BaseException:
                        self._free.append(ctx)
                        raise
                    self._busy += 1
                    return ctx, resident
                if len(self._contexts) + self._creating < self._max_contexts:
                    self._creating += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EngineBusyError(
                        f"TensorRT engine {self.path}: all {len(self._contexts)} execution "
                        f"contexts stayed busy for {self._checkout_timeout_s:.0f} s (more "
                        "threads run batches than the engine was opened for: pass workers)")
                self._cond.wait(remaining)
        # Made outside the lock (slow: allocates device memory); the slot is reserved.
        try:
            ctx = self._new_context()
        except BaseException:
            with self._cond:
                self._creating -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._creating -= 1
            self._contexts.append(ctx)
            self._busy += 1
            closed = self._closed
        if closed:
            self._checkin(ctx)  # frees it (and the engine if it was the last one)
            raise EngineClosedError(f"TensorRT engine {self.path} is closed")
        with self._cond:
            logger.info("TensorRT engine %s: execution context %d of at most %d", self.path,
                        len(self._contexts), self._max_contexts)
            try:
                return ctx, self._bind_resident(ctx)
            except BaseException:
                self._busy -= 1
                self._free.append(ctx)
                self._cond.notify_all()
                raise

    def _bind_resident(self, ctx: _Context) -> dict[str, _Resident]:
        """Under the lock: point ``ctx`` at the current resident buffers (once per change)."""
        if ctx.resident_version != self._resident_version:
            for res in self._resident.values():
                ctx.bind(res.name, res.ptr, res.shape)
                ctx.drop_own_buffers(res.name)
            ctx.resident_version = self._resident_version
        return dict(self._resident)

    def _checkin(self, ctx: _Context) -> None:
        with self._cond:
            self._busy -= 1
            closed = self._closed
            if closed:
                self._contexts.remove(ctx)
                last = self._busy == 0 and self._creating == 0
            else:
                self._free.append(ctx)
            self._cond.notify_all()
        if closed:
            ctx.close()
            if last:
                logger.info("TensorRT engine %s: the last running context returned after "
                            "close; freeing the engine", self.path)
                self._release_shared()

    def _new_context(self) -> _Context:
        assert self._engine is not None
        return _Context(self._engine, self.inputs, self.outputs, self._buffer_shapes,
                        self._cudart)

    def _release_shared(self) -> None:
        """Free the resident buffers, the engine and the runtime (no context is alive)."""
        with self._cond:
            shared = [*self._resident.values(), *self._retired]
            self._resident.clear()
            self._retired.clear()
        for res in shared:
            _cuda_free(self._cudart.cudaFree(res.ptr), f"cudaFree of resident {res.name}")
        # Contexts first (done), then the engine, then the runtime that made it.
        self._engine = None
        self._runtime = None

    def _release_all(self) -> None:
        for ctx in self._contexts:
            ctx.close()
        self._contexts.clear()
        self._free.clear()
        self._release_shared()

    # -- one batch ----------------------------------------------------------------------
    def _run_on(self, ctx: _Context, resident: dict[str, _Resident],
                feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from a2f_engine.build_trt import dims_tuple

        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        context, stream = ctx.context, ctx.stream
        if context is None:
            raise EngineClosedError(f"TensorRT engine {self.path}: context already freed")
        clash = sorted(set(feeds) & set(resident))
        if clash:
            raise ValueError(f"inputs {clash} are resident (set once with set_resident_input); "
                             "run() does not take them")
        for spec in self.inputs:
            if spec.name in resident:
                continue
            if spec.name not in feeds:
                raise ValueError(f"missing input {spec.name!r}; inputs are "
                                 f"{[s.name for s in self.inputs if s.name not in resident]}")
            arr = np.asarray(feeds[spec.name])
            cap = self._buffer_shapes[spec.name]
            if arr.ndim != len(cap):
                raise ValueError(f"input {spec.name!r} has rank {arr.ndim}, the engine "
                                 f"expects {len(cap)} (shape {spec.shape})")
            if spec.batch_axis >= 0 and arr.shape[spec.batch_axis] > self.max_batch:
                raise ValueError(f"batch {arr.shape[spec.batch_axis]} of {spec.name!r} exceeds "
                                 f"max batch {self.max_batch}")
            if any(a > c for a, c in zip(arr.shape, cap, strict=True)):
                raise ValueError(f"shape {arr.shape} of {spec.name!r} exceeds the buffers "
                                 f"({cap})")
            if not context.set_input_shape(spec.name, arr.shape):
                raise ValueError(f"shape {arr.shape} of {spec.name!r} is outside the engine's "
                                 "optimisation profile")
            staged = ctx.host[spec.name][:arr.size].reshape(arr.shape)
            np.copyto(staged, arr, casting="same_kind" if arr.dtype.kind == "f" else "unsafe")
            _cuda(cudart.cudaMemcpyAsync(ctx.buffers[spec.name], staged.ctypes.data,
                                         staged.nbytes, h2d, stream),
                  f"copy of {spec.name} to device")
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError(f"TensorRT execution of {self.path} failed (see [TRT] [E])")
        staged_out = {}
        for spec in self.outputs:
            shape = dims_tuple(context.get_tensor_shape(spec.name))
            view = ctx.host[spec.name][:int(np.prod(shape))].reshape(shape)
            _cuda(cudart.cudaMemcpyAsync(view.ctypes.data, ctx.buffers[spec.name], view.nbytes,
                                         d2h, stream), f"copy of {spec.name} to host")
            staged_out[spec.name] = view
        _cuda(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        # The pinned buffers are reused by the next run: hand out copies.
        return {k: v.astype(np.float32, copy=True) for k, v in staged_out.items()}


class _Resident:
    """One resident input's device buffer (shared read-only by every context)."""

    def __init__(self, name: str, ptr: int, shape: tuple[int, ...]) -> None:
        self.name = name
        self.ptr = ptr
        self.shape = shape


class _Context:
    """One execution context with its own CUDA stream, device buffers and pinned host
    staging buffers, sized for the engine's batch."""

    def __init__(self, engine: trt.ICudaEngine, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], buffer_shapes: dict[str, tuple[int, ...]],
                 cudart: Any) -> None:
        from a2f_engine.build_trt import dims_tuple

        self._cudart = cudart
        self.buffers: dict[str, int] = {}
        self.pinned: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self.stream: Any = None
        self.resident_version = 0
        context = engine.create_execution_context()
        if context is None:
            raise EngineLoadError("TensorRT could not create an execution context (out of "
                                  "device memory?)")
        self.context: trt.IExecutionContext | None = context
        try:
            self.stream = _cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
            for name, shape in buffer_shapes.items():
                if not context.set_input_shape(name, shape):
                    raise EngineLoadError(f"TensorRT refused input shape {shape} for {name} "
                                          "(outside the optimisation profile)")
            for spec in (*inputs, *outputs):
                shape = (buffer_shapes[spec.name] if spec.name in buffer_shapes
                         else dims_tuple(context.get_tensor_shape(spec.name)))
                nbytes = max(1, int(np.prod(shape)) * spec.dtype.itemsize)
                ptr = int(_cuda(cudart.cudaMalloc(nbytes),
                                f"cudaMalloc({nbytes}) for {spec.name}"))
                self.buffers[spec.name] = ptr
                self.bind(spec.name, ptr)
                host = int(_cuda(cudart.cudaHostAlloc(nbytes, cudart.cudaHostAllocDefault),
                                 f"cudaHostAlloc({nbytes}) for {spec.name}"))
                self.pinned[spec.name] = host
                self.host[spec.name] = _host_view(host, nbytes, spec.dtype)
        except BaseException:
            self.close()
            raise

    def bind(self, name: str, ptr: int, shape: tuple[int, ...] | None = None) -> None:
        """Point tensor ``name`` at device memory ``ptr`` (and fix its shape if given)."""
        assert self.context is not None
        if shape is not None and not self.context.set_input_shape(name, shape):
            raise EngineLoadError(f"TensorRT refused shape {shape} for input {name}")
        if not self.context.set_tensor_address(name, ptr):
            raise EngineLoadError(f"TensorRT refused the address of tensor {name}")

    def drop_own_buffers(self, name: str) -> None:
        """Free this context's buffers for ``name`` (bound to a shared resident buffer)."""
        cudart = self._cudart
        self.host.pop(name, None)
        ptr = self.buffers.pop(name, None)
        if ptr is not None:
            _cuda_free(cudart.cudaFree(ptr), f"cudaFree of {name}")
        host = self.pinned.pop(name, None)
        if host is not None:
            _cuda_free(cudart.cudaFreeHost(host), f"cudaFreeHost of {name}")

    def close(self) -> None:
        """Free the context, its stream and buffers (the context first: it uses them)."""
        cudart = self._cudart
        self.context = None
        self.host.clear()
        for name, ptr in self.buffers.items():
            _cuda_free(cudart.cudaFree(ptr), f"cudaFree of {name}")
        self.buffers.clear()
        for name, ptr in self.pinned.items():
            _cuda_free(cudart.cudaFreeHost(ptr), f"cudaFreeHost of {name}")
        self.pinned.clear()
        if self.stream is not None:
            _cuda_free(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None
