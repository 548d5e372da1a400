"""FAKE TensorRT and FAKE cuda-python runtime, for testing the logic around them.

Neither TensorRT nor a GPU can exist on CI machines. These fakes implement the small part of
``tensorrt`` and ``cuda.bindings.runtime`` that :mod:`a2f_engine` calls, with the same names,
signatures and return conventions, and RECORD every call that matters (runtime flags, builder
flags, tensor addresses, allocations and frees, contexts made and destroyed) so that tests
check what our code does with them. "Device" memory is ordinary host memory, so copies are
real; a fake plan is JSON naming the ONNX it came from, and the fake execution context runs
that ONNX with ONNX Runtime on the bytes at the bound addresses (fp16 plans round to
float16), so results can be compared with the reference.

:func:`install` puts both into ``sys.modules`` (use through the ``fake_trt`` fixture).
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest


# -- cuda-python runtime ---------------------------------------------------------------------
class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


CudaError = cudaError_t
CopyKind = cudaMemcpyKind


class FakeStream(int):
    """cuda-python's cudaStream_t converts to int; so does this."""


@dataclass
class CudaLedger:
    """What the fake CUDA runtime saw."""

    device: dict[int, ctypes.Array[ctypes.c_char]] = field(default_factory=dict)
    pinned: dict[int, ctypes.Array[ctypes.c_char]] = field(default_factory=dict)
    streams: set[int] = field(default_factory=set)
    mallocs: int = 0
    frees: int = 0
    host_allocs: int = 0
    host_frees: int = 0
    streams_made: int = 0
    copies: list[tuple[str, bool]] = field(default_factory=list)  # (kind, host side pinned)
    sync_uploads: int = 0
    bad_calls: list[str] = field(default_factory=list)  # double free, unknown pointer...
    fail_malloc_after: int | None = None  # the n-th cudaMalloc from now fails

    def live_device_bytes(self) -> int:
        return sum(len(b) for b in self.device.values())


class FakeCudart(types.ModuleType):
    """``cuda.bindings.runtime`` (the calls a2f_engine makes)."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaHostAllocDefault = 0

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.ledger = CudaLedger()
        self._lock = threading.Lock()

    def _alloc(self, pool: dict[int, Any], n: int) -> int:
        buf = ctypes.create_string_buffer(max(1, int(n)))
        ptr = ctypes.addressof(buf)
        pool[ptr] = buf
        return ptr

    def cudaMalloc(self, n: int) -> tuple[CudaError, int]:
        with self._lock:
            led = self.ledger
            if led.fail_malloc_after is not None:
                if led.fail_malloc_after == 0:
                    return cudaError_t.cudaErrorMemoryAllocation, 0
                led.fail_malloc_after -= 1
            led.mallocs += 1
            return cudaError_t.cudaSuccess, self._alloc(led.device, n)

    def cudaFree(self, ptr: int) -> tuple[CudaError]:
        with self._lock:
            if self.ledger.device.pop(int(ptr), None) is None:
                self.ledger.bad_calls.append(f"cudaFree of unknown pointer {ptr:#x}")
                return (cudaError_t.cudaErrorInvalidValue,)
            self.ledger.frees += 1
            return (cudaError_t.cudaSuccess,)

    def cudaHostAlloc(self, n: int, flags: int) -> tuple[CudaError, int]:
        with self._lock:
            self.ledger.host_allocs += 1
            return cudaError_t.cudaSuccess, self._alloc(self.ledger.pinned, n)

    def cudaFreeHost(self, ptr: int) -> tuple[CudaError]:
        with self._lock:
            if self.ledger.pinned.pop(int(ptr), None) is None:
                self.ledger.bad_calls.append(f"cudaFreeHost of unknown pointer {ptr:#x}")
                return (cudaError_t.cudaErrorInvalidValue,)
            self.ledger.host_frees += 1
            return (cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple[CudaError, FakeStream]:
        with self._lock:
            self.ledger.streams_made += 1
            s = FakeStream(1000 + self.ledger.streams_made)
            self.ledger.streams.add(int(s))
            return cudaError_t.cudaSuccess, s

    def cudaStreamDestroy(self, s: Any) -> tuple[CudaError]:
        with self._lock:
            if int(s) not in self.ledger.streams:
                self.ledger.bad_calls.append(f"cudaStreamDestroy of unknown stream {s}")
                return (cudaError_t.cudaErrorInvalidValue,)
            self.ledger.streams.discard(int(s))
            return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, s: Any) -> tuple[CudaError]:
        return (cudaError_t.cudaSuccess,)

    def _check_range(self, pool: dict[int, Any], ptr: int, n: int) -> bool:
        return any(p <= ptr and ptr + n <= p + len(b) for p, b in pool.items())

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: CopyKind,
                        stream: Any) -> tuple[CudaError]:
        with self._lock:
            led = self.ledger
            if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
                dev_ok, host = self._check_range(led.device, dst, n), src
            else:
                dev_ok, host = self._check_range(led.device, src, n), dst
            if not dev_ok:
                led.bad_calls.append(f"copy touches unallocated device memory ({kind.name})")
                return (cudaError_t.cudaErrorInvalidValue,)
            led.copies.append((kind.name, self._check_range(led.pinned, host, n)))
        ctypes.memmove(dst, src, n)
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpy(self, dst: int, src: int, n: int, kind: CopyKind,
                   ) -> tuple[CudaError]:
        with self._lock:
            if not self._check_range(self.ledger.device, dst, n):
                self.ledger.bad_calls.append("cudaMemcpy to unallocated device memory")
                return (cudaError_t.cudaErrorInvalidValue,)
            self.ledger.sync_uploads += 1
        ctypes.memmove(dst, src, n)
        return (cudaError_t.cudaSuccess,)


# -- TensorRT ----------------------------------------------------------------------------------
def _enum(name: str, members: list[str]) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {m: i for i, m in enumerate(members)})  # type: ignore[return-value]


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass


class Dims(tuple[int, ...]):
    def __new__(cls, dims: Any = ()) -> Dims:
        return super().__new__(cls, tuple(int(d) for d in dims))


@dataclass
class TrtLedger:
    """What the fake TensorRT saw."""

    runtimes: list[FakeRuntime] = field(default_factory=list)
    runtimes_alive: int = 0
    engines_alive: int = 0
    contexts_made: int = 0
    contexts_alive: int = 0
    addresses: list[tuple[str, int]] = field(default_factory=list)
    executions: int = 0
    use_after_free: list[str] = field(default_factory=list)
    network_flags: list[int] = field(default_factory=list)
    set_flags: list[str] = field(default_factory=list)
    cleared_flags: list[str] = field(default_factory=list)
    hardware_level: str | None = None
    profile_index: int = 0  # what add_optimization_profile returns
    gate: threading.Event | None = None  # when set, execute waits for it
    inside_execute: int = 0


class FakeTensorRTModule(types.ModuleType):
    """The ``tensorrt`` module. ``version`` picks which members exist, as in the real one:
    ``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`` from 10.9, ``BuilderFlag.FP16``
    before 11."""

    def __init__(self, version: str, cudart: FakeCudart) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.ledger = TrtLedger()
        self.cudart = cudart
        major, minor = (int(p) for p in version.split(".")[:2])
        flags = ["TF32", "VERSION_COMPATIBLE"]
        if major < 11:
            flags.insert(0, "FP16")
        self.BuilderFlag = _enum("BuilderFlag", flags)
        levels = ["NONE", "AMPERE_PLUS"]
        if (major, minor) >= (10, 9):
            levels.append("SAME_COMPUTE_CAPABILITY")
        self.HardwareCompatibilityLevel = _enum("HardwareCompatibilityLevel", levels)
        self.MemoryPoolType = _enum("MemoryPoolType", [
            "WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM",
            "TACTIC_DRAM", "TACTIC_SHARED_MEMORY"])
        self.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag",
                                                   ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
        self.TensorIOMode = TensorIOMode
        self.DataType = DataType
        self.ILogger = ILogger
        self.Dims = Dims
        mod = self

        class Builder:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def create_network(self, flags: int) -> FakeNetwork:
                mod.ledger.network_flags.append(flags)
                return FakeNetwork(flags)

            def create_builder_config(self) -> FakeConfig:
                return FakeConfig(mod)

            def create_optimization_profile(self) -> FakeProfile:
                return FakeProfile()

            def build_serialized_network(self, network: FakeNetwork, config: FakeConfig
                                         ) -> bytes | None:
                return network.plan(config)

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self._rt = FakeRuntime(mod, logger)
                mod.ledger.runtimes.append(self._rt)

            @property
            def engine_host_code_allowed(self) -> bool:
                return self._rt.host_code_allowed

            @engine_host_code_allowed.setter
            def engine_host_code_allowed(self, value: bool) -> None:
                self._rt.host_code_allowed = value

            def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
                return self._rt.deserialize(plan)

            def __del__(self) -> None:
                self._rt.alive = False
                mod.ledger.runtimes_alive -= 1

        self.Builder = Builder
        self.Runtime = Runtime
        self.OnnxParser = FakeOnnxParser

    @staticmethod
    def nptype(dt: DataType) -> type[Any]:
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16,
                DataType.INT32: np.int32}[dt]


class FakeRuntime:
    def __init__(self, mod: FakeTensorRTModule, logger: Any) -> None:
        self.mod, self.logger = mod, logger
        self.host_code_allowed = False
        self.alive = True
        mod.ledger.runtimes_alive += 1

    def deserialize(self, plan: bytes) -> FakeEngine | None:
        try:
            doc = json.loads(plan)
        except ValueError:
            self.logger.log(Severity.ERROR, "fake: not a plan")
            return None
        if doc.get("tensorrt_version") != self.mod.__version__:
            self.logger.log(Severity.ERROR, "fake: Version tag does not match")
            return None
        if doc.get("version_compatible") and not self.host_code_allowed:
            # What TensorRT does: a plan with host code needs engine_host_code_allowed.
            self.logger.log(Severity.ERROR, "fake: engine contains host code; "
                            "engine_host_code_allowed is false")
            return None
        return FakeEngine(self.mod, doc)


@dataclass
class _IO:
    name: str
    mode: TensorIOMode
    shape: tuple[int, ...]
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None


class FakeEngine:
    def __init__(self, mod: FakeTensorRTModule, doc: dict[str, Any]) -> None:
        self.mod, self.doc = mod, doc
        self.io: list[_IO] = []
        for t in doc["inputs"]:
            prof = doc["profiles"].get(t["name"])
            if prof is None:
                prof = [t["shape"]] * 3
            self.io.append(_IO(t["name"], TensorIOMode.INPUT, tuple(t["shape"]),
                               tuple(tuple(p) for p in prof)))  # type: ignore[arg-type]
        for t in doc["outputs"]:
            self.io.append(_IO(t["name"], TensorIOMode.OUTPUT, tuple(t["shape"])))
        self._by_name = {t.name: t for t in self.io}
        self._session: Any = None
        mod.ledger.engines_alive += 1

    def __del__(self) -> None:
        self.mod.ledger.engines_alive -= 1

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i].name

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._by_name[name].shape)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._by_name[name].mode

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[Dims]:
        prof = self._by_name[name].profile
        assert prof is not None and profile == 0
        return [Dims(p) for p in prof]

    def create_execution_context(self) -> FakeContext:
        self.mod.ledger.contexts_made += 1
        return FakeContext(self)

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self.doc["onnx"],
                                                 providers=["CPUExecutionProvider"])
        return self._session


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine  # keeps the engine alive, as TensorRT's Python binding does
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        engine.mod.ledger.contexts_alive += 1

    def __del__(self) -> None:
        self.engine.mod.ledger.contexts_alive -= 1

    def set_input_shape(self, name: str, shape: Any) -> bool:
        t = self.engine._by_name.get(name)
        if t is None or t.profile is None:
            return False
        shape = tuple(int(d) for d in shape)
        lo, _, hi = t.profile
        if len(shape) != len(lo) or not all(
                a <= b <= c for a, b, c in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine._by_name:
            return False
        self.addresses[name] = int(ptr)
        self.engine.mod.ledger.addresses.append((name, int(ptr)))
        return True

    def _batch(self) -> int:
        for t in self.engine.io:
            if t.mode == TensorIOMode.INPUT and t.name in self.shapes:
                for i, d in enumerate(t.shape):
                    if d < 0:
                        return self.shapes[t.name][i]
        return 1

    def get_tensor_shape(self, name: str) -> Dims:
        t = self.engine._by_name[name]
        if t.mode == TensorIOMode.INPUT:
            return Dims(self.shapes.get(name, t.shape))
        b = self._batch()
        return Dims(b if d < 0 else d for d in t.shape)

    def execute_async_v3(self, stream: int) -> bool:
        mod = self.engine.mod
        led, cuda = mod.ledger, mod.cudart
        led.inside_execute += 1
        try:
            if led.gate is not None:
                assert led.gate.wait(60), "fake execute gate never opened"
            feeds = {}
            for t in self.engine.io:
                if t.mode != TensorIOMode.INPUT:
                    continue
                shape = self.shapes[t.name]
                n = int(np.prod(shape)) * 4
                ptr = self.addresses[t.name]
                if not cuda._check_range(cuda.ledger.device, ptr, n):
                    led.use_after_free.append(t.name)
                    return False
                feeds[t.name] = np.frombuffer(ctypes.string_at(ptr, n),
                                              np.float32).reshape(shape)
            names = [t.name for t in self.engine.io if t.mode == TensorIOMode.OUTPUT]
            results = self.engine.session().run(names, feeds)
            for name, out in zip(names, results, strict=True):
                out = np.ascontiguousarray(out, dtype=np.float32)
                if self.engine.doc.get("precision") == "fp16":
                    out = out.astype(np.float16).astype(np.float32)
                ptr = self.addresses[name]
                if not cuda._check_range(cuda.ledger.device, ptr, out.nbytes):
                    led.use_after_free.append(name)
                    return False
                ctypes.memmove(ptr, out.ctypes.data, out.nbytes)
            led.executions += 1
            return True
        finally:
            led.inside_execute -= 1


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.onnx = ""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> Any:
        t = self.inputs[i]
        return types.SimpleNamespace(name=t["name"], shape=Dims(t["shape"]))

    def plan(self, config: FakeConfig) -> bytes | None:
        mod = config.mod
        flags = {f.name for f in config.flags}
        return json.dumps({
            "tensorrt_version": mod.__version__, "onnx": self.onnx,
            "inputs": self.inputs, "outputs": self.outputs,
            "profiles": config.profiles,
            "version_compatible": "VERSION_COMPATIBLE" in flags,
            "precision": "fp16" if "FP16" in flags else "fp32",
        }).encode()


class FakeOnnxParser:
    """Reads the ONNX's graph inputs/outputs (dynamic axes as -1) with the onnx package."""

    def __init__(self, network: FakeNetwork, logger: Any) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse_from_file(self, path: str) -> bool:
        import onnx

        try:
            model = onnx.load(path)
        except Exception as err:
            self.errors.append(str(err))
            return False

        def shape(vi: Any) -> list[int]:
            return [d.dim_value if d.HasField("dim_value") else -1
                    for d in vi.type.tensor_type.shape.dim]

        init = {i.name for i in model.graph.initializer}
        self.network.inputs = [{"name": v.name, "shape": shape(v)}
                               for v in model.graph.input if v.name not in init]
        self.network.outputs = [{"name": v.name, "shape": shape(v)} for v in model.graph.output]
        self.network.onnx = path
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> Any:
        msg = self.errors[i]
        return types.SimpleNamespace(code=lambda: 1, desc=lambda: msg, node=lambda: -1,
                                     node_name=lambda: "", node_operator=lambda: "")


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, lo: Dims, mid: Dims, hi: Dims) -> None:
        self.shapes[name] = [list(lo), list(mid), list(hi)]


class FakeTimingCache:
    def serialize(self) -> bytes:
        return b"fake-timing-cache"


class FakeConfig:
    def __init__(self, mod: FakeTensorRTModule) -> None:
        self.mod = mod
        self.flags: set[Any] = {mod.BuilderFlag.TF32}  # type: ignore[attr-defined]  # TF32 is on by default
        self.profiles: dict[str, list[list[int]]] = {}
        self.pools: dict[Any, int] = {}
        self.builder_optimization_level = 3
        self._level: Any = None
        self._cache = FakeTimingCache()

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)
        self.mod.ledger.set_flags.append(flag.name)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag)
        self.mod.ledger.cleared_flags.append(flag.name)

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._level

    @hardware_compatibility_level.setter
    def hardware_compatibility_level(self, level: Any) -> None:
        self._level = level
        self.mod.ledger.hardware_level = level.name

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.update(profile.shapes)
        return self.mod.ledger.profile_index

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        return self._cache

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        return True

    def get_timing_cache(self) -> FakeTimingCache:
        return self._cache


@dataclass
class FakeGPU:
    """Both fakes, installed."""

    trt: FakeTensorRTModule
    cudart: FakeCudart


_plan_ids = itertools.count()


def install(monkeypatch: pytest.MonkeyPatch, version: str = "10.13.3.9") -> FakeGPU:
    """Put the fakes into ``sys.modules`` as ``tensorrt`` and ``cuda.bindings.runtime``."""
    cudart = FakeCudart()
    trt = FakeTensorRTModule(version, cudart)
    cuda_pkg = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart  # type: ignore[attr-defined]
    cuda_pkg.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    monkeypatch.setitem(__import__("sys").modules, "cuda", cuda_pkg)
    monkeypatch.setitem(__import__("sys").modules, "cuda.bindings", bindings)
    monkeypatch.setitem(__import__("sys").modules, "cuda.bindings.runtime", cudart)
    return FakeGPU(trt, cudart)


def write_plan(path: Path, onnx: Path, inputs: list[dict[str, Any]],
               outputs: list[dict[str, Any]], profiles: dict[str, list[list[int]]],
               version: str = "10.13.3.9", version_compatible: bool = False,
               precision: str = "fp32") -> Path:
    """A fake plan file for ``onnx`` (what FakeTensorRT's builder would write)."""
    path.write_text(json.dumps({
        "tensorrt_version": version, "onnx": str(onnx), "inputs": inputs,
        "outputs": outputs, "profiles": profiles, "version_compatible": version_compatible,
        "precision": precision, "id": next(_plan_ids)}))
    return path
