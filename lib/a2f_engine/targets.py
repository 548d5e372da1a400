"""Target fingerprints: everything an engine's validity depends on besides the ONNX bytes.

A TensorRT plan works only with the TensorRT version that built it, on the same compute
capability (and is meant for the same GPU model), built with the same precision and shape
profiles. An ONNX Runtime optimised model depends on the ONNX Runtime version, the execution
provider, the optimisation level and the CPU features the fused kernels were chosen for.
:class:`Target` holds those fields; its :attr:`~Target.fingerprint` is a short hash of them in
canonical form. Any difference in any field gives another fingerprint, hence a rebuild.

The TensorRT fields are exactly those that decide whether a plan loads and computes what was
verified (see docs/engine-builder.md, "Engine compatibility"): the TensorRT version, the GPU
(model name and compute capability; only the compute capability for
``--hardwareCompatibilityLevel=sameComputeCapability``; neither, but "Ampere or newer", for
``ampere+``), the effective precision and the build settings of ``trt_info.json``. CUDA
versions are not among them: the CUDA runtime TensorRT uses is fixed by the TensorRT build,
and cuda-python's ``cudaRuntimeGetVersion`` reports the wheel's own version, which changes
with the image and not with the plan.

Precision is chosen by the engine-builder (``--precision``, or ``--fp16`` in
``trt_info.json``) and written into the engine record; the inference server takes it from
the record (:func:`current_target` with ``precision=None``), so the two always agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2f_volume.layout import BACKEND_ONNXRUNTIME, BACKEND_TENSORRT

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")

#: Oldest TensorRT the A2F-3D models are built with (NVIDIA's SDK requires 10.13 or newer);
#: the GPU images check it at build time and the engine-builder at start.
TENSORRT_MIN_VERSION = (10, 13)

# CPU flags that change which kernels ONNX Runtime's optimiser and MLAS pick (x86 and Arm).
_CPU_FEATURES = frozenset({
    "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "i8mm", "bf16",
})


@dataclass(frozen=True)
class Target:
    """What an engine was built for. ``fields`` is JSON-serialisable and fully compared."""

    backend: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the canonical JSON of backend and fields."""
        canon = json.dumps({"backend": self.backend, **self.fields}, sort_keys=True,
                           separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, **json.loads(json.dumps(dict(self.fields)))}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.fields.items())
                         if not isinstance(v, dict | list))


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The optimisation-relevant CPU flags of this machine (sorted), from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(value.split())
            break  # every core reports the same set
    return sorted(found & _CPU_FEATURES)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}, expected one of {PRECISIONS}")
    return precision


def onnxruntime_target(precision: str = "fp32") -> Target:
    """The ONNX Runtime target of this machine (CPU execution provider)."""
    import onnxruntime as ort

    return Target(BACKEND_ONNXRUNTIME, {
        "onnxruntime_version": ort.__version__,
        "execution_provider": "CPUExecutionProvider",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "machine": platform.machine(),
        "cpu_features": cpu_features(),
        "precision": check_precision(precision),
    })


@dataclass(frozen=True)
class GpuInfo:
    """Device 0 as CUDA reports it."""

    name: str
    compute_capability: str  # "7.5"
    cuda_runtime_version: str  # "12.6"
    cuda_driver_version: str

    @property
    def sm(self) -> str:
        """The seed's ``.gpu_arch`` spelling: ``sm_75``."""
        return "sm_" + self.compute_capability.replace(".", "")


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def gpu_info() -> tuple[GpuInfo | None, str]:
    """Device 0 through cuda-python, or None and the reason none is usable."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as err:
        return None, f"cuda-python is not installed ({err})"
    try:
        status, count = cudart.cudaGetDeviceCount()
        if status != cudart.cudaError_t.cudaSuccess:
            return None, f"CUDA reports no usable device ({status.name})"
        if count < 1:
            return None, "CUDA sees 0 devices"
        status, prop = cudart.cudaGetDeviceProperties(0)
        if status != cudart.cudaError_t.cudaSuccess:
            return None, f"cudaGetDeviceProperties failed ({status.name})"
        _, rt = cudart.cudaRuntimeGetVersion()
        _, drv = cudart.cudaDriverGetVersion()
    except Exception as err:  # a missing libcudart or driver surfaces as various errors
        return None, f"CUDA is not usable ({type(err).__name__}: {err})"
    name = prop.name.decode("utf-8", "replace").rstrip("\x00") if isinstance(
        prop.name, bytes) else str(prop.name)
    return GpuInfo(name, f"{prop.major}.{prop.minor}", _cuda_version(rt), _cuda_version(drv)), ""


def tensorrt_version() -> tuple[str | None, str]:
    """TensorRT's version, or None and why it is unusable (the stub package imports empty)."""
    try:
        import tensorrt
    except ImportError as err:
        return None, f"tensorrt is not installed ({err})"
    if not hasattr(tensorrt, "Builder"):
        return None, "the tensorrt package has no Builder (type stubs only, no runtime library)"
    return str(tensorrt.__version__), ""


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.3.9"`` -> ``(10, 13, 3, 9)``; non-numeric parts end the tuple."""
    out: list[int] = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits or digits != part:
            if digits and part.startswith(digits):
                out.append(int(digits))
            break
        out.append(int(digits))
    return tuple(out)


def check_tensorrt_version(version: str) -> None:
    """RuntimeError naming the version found and the one the models need, if too old."""
    if version_tuple(version)[:2] < TENSORRT_MIN_VERSION:
        need = ".".join(map(str, TENSORRT_MIN_VERSION))
        raise RuntimeError(f"TensorRT {version} is too old: the A2F-3D models need TensorRT "
                           f"{need} or newer (see docs/engine-builder.md)")


def effective_precision(requested: str, build: Mapping[str, Any]) -> str:
    """The precision an engine is really built in: ``fp16`` when the builder was asked for
    it or when the model's ``trt_info.json`` carries ``--fp16``, else ``fp32``."""
    check_precision(requested)
    return "fp16" if requested == "fp16" or bool(build.get("fp16")) else "fp32"


def target_precision(target: Target) -> str:
    """The precision recorded in a target (``fp32`` when the target has none)."""
    return check_precision(str(target.fields.get("precision", "fp32")))


def tensorrt_target(gpu: GpuInfo, trt_version: str, precision: str,
                    build: Mapping[str, Any]) -> Target:
    """A TensorRT target: TensorRT version, GPU, effective precision and build settings
    (``build`` carries the profiles, memory pools and flags of the model's ``trt_info.json``).

    ``precision`` is what the builder was asked for; ``--fp16`` in ``build`` makes it fp16
    (:func:`effective_precision`). The GPU fields follow the plan's hardware compatibility
    level: model name and compute capability by default, the compute capability alone for
    ``sameComputeCapability``, and only "Ampere or newer" for ``ampere+`` (raises
    RuntimeError on an older GPU, where such a plan cannot run).
    """
    level = str(build.get("hardware_compatibility_level", "none"))
    gpu_fields: dict[str, Any]
    if level == "ampere+":
        if version_tuple(gpu.compute_capability) < (8, 0):
            raise RuntimeError(f"--hardwareCompatibilityLevel=ampere+ needs compute "
                               f"capability 8.0 or newer; {gpu.name} has "
                               f"{gpu.compute_capability}")
        gpu_fields = {"gpu_family": "ampere+"}
    elif level == "sameComputeCapability":
        gpu_fields = {"compute_capability": gpu.compute_capability}
    else:
        gpu_fields = {"gpu_name": gpu.name, "compute_capability": gpu.compute_capability}
    return Target(BACKEND_TENSORRT, {
        **gpu_fields,
        "tensorrt_version": trt_version,
        "precision": effective_precision(precision, build),
        "build": dict(build),
    })


def recorded_precision(folder: str | Path, backend: str = BACKEND_TENSORRT) -> str | None:
    """The precision the model's published engine record states, or None when there is no
    readable record (or it states no known precision)."""
    from a2f_volume.engine_record import read_record
    from a2f_volume.layout import ModelPaths

    try:
        rec = read_record(ModelPaths(Path(folder)).engine_record(backend))
    except (OSError, ValueError):
        return None
    value = rec.target.get("precision")
    return value if value in PRECISIONS else None


def choose_backend(requested: str) -> tuple[str, str]:
    """Resolve ``auto|tensorrt|onnxruntime`` to a backend, with the reason for the choice."""
    if requested == BACKEND_ONNXRUNTIME:
        return BACKEND_ONNXRUNTIME, "requested explicitly"
    if requested not in ("auto", BACKEND_TENSORRT):
        raise ValueError(f"unknown backend {requested!r}, expected auto, tensorrt or onnxruntime")
    version, why_not = tensorrt_version()
    gpu, why_no_gpu = gpu_info() if version else (None, "")
    if version and gpu:
        return BACKEND_TENSORRT, (f"TensorRT {version} imports and GPU {gpu.name} "
                                  f"(compute {gpu.compute_capability}) is visible")
    reason = why_not or why_no_gpu
    if requested == BACKEND_TENSORRT:
        raise RuntimeError(f"backend tensorrt requested but unusable: {reason}")
    return BACKEND_ONNXRUNTIME, f"TensorRT not usable: {reason}"


def current_target(folder: str | Path, backend: str, precision: str | None = None) -> Target:
    """The target an engine of the model folder must match on this machine (what the
    engine-builder builds for and what the inference server checks against).

    ``precision`` None (the inference server) takes the precision from the engine record
    beside the engine, so that whatever precision the engine-builder was configured with is
    served; every other field is this machine's. A record whose precision contradicts the
    model's ``trt_info.json`` (``--fp16`` there, ``fp32`` recorded) still mismatches.
    """
    if backend == BACKEND_ONNXRUNTIME:
        return onnxruntime_target("fp32" if precision is None else precision)
    if backend != BACKEND_TENSORRT:
        raise ValueError(f"unknown backend {backend!r}")
    from a2f_engine.trt_flags import load_trt_info

    version, why = tensorrt_version()
    gpu, why_gpu = gpu_info()
    if version is None or gpu is None:
        raise RuntimeError(f"TensorRT target unavailable: {why or why_gpu}")
    if precision is None:
        precision = recorded_precision(folder) or "fp32"
    return tensorrt_target(gpu, version, precision, load_trt_info(folder).to_json())
