"""TensorRT build through its Python API, with the settings of the model's ``trt_info.json``.

Equivalent to ``trtexec --onnx=network.onnx --saveEngine=network.trt <trt_build_param...>``
(see :mod:`a2f_engine.trt_flags`), plus a timing cache kept on the volume per target and
reused across builds. Needs the TensorRT runtime library and a GPU; importing this module
does not.

TensorRT versions differ in what exists: ``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY``
from 10.9, ``BuilderFlag.FP16`` until 10.x (deprecated in 10.12, gone in 11, where networks
are strongly typed and precision follows the ONNX's tensor types). A setting the installed
TensorRT lacks is refused with an :class:`EngineBuildError` naming it and the version that
has it, before any build work starts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from a2f_engine.errors import EngineBuildError
from a2f_engine.targets import TENSORRT_MIN_VERSION, effective_precision, version_tuple
from a2f_engine.trt_flags import MEMORY_POOLS, TrtBuildSpec
from a2f_volume.publish import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt

logger = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    """The tensorrt module, or EngineBuildError if only its stubs are installed."""
    try:
        import tensorrt
    except ImportError as err:
        raise EngineBuildError(f"TensorRT is not installed: {err}") from err
    if not hasattr(tensorrt, "Builder"):
        raise EngineBuildError("TensorRT runtime library is missing (only type stubs found)")
    return tensorrt


def make_logger(trt_mod: Any) -> trt.ILogger:
    """A TensorRT logger that forwards to Python logging (``[TRT] [E] ...`` in spirit)."""

    class _Logger(trt_mod.ILogger):
        def __init__(self) -> None:
            trt_mod.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            sev = trt_mod.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                logger.error("[TRT] [E] %s", msg)
            elif severity == sev.WARNING:
                logger.warning("[TRT] [W] %s", msg)
            elif severity == sev.INFO:
                logger.info("[TRT] [I] %s", msg)

    return _Logger()


def _parse(trt_mod: Any, network: trt.INetworkDefinition, trt_logger: trt.ILogger,
           onnx_path: Path) -> None:
    parser: trt.OnnxParser = trt_mod.OnnxParser(network, trt_logger)
    if parser.parse_from_file(os.fspath(onnx_path)):
        return
    reasons = []
    for i in range(parser.num_errors):
        err: trt.ParserError = parser.get_error(i)
        reason = (f"{err.code()}: {err.desc()} (node {err.node()} '{err.node_name()}', "
                  f"op {err.node_operator()})")
        logger.error("TensorRT parser error %d/%d in %s: %s", i + 1, parser.num_errors,
                     onnx_path, reason)
        reasons.append(reason)
    raise EngineBuildError(f"{onnx_path}: TensorRT ONNX parser reported {len(reasons)} "
                           f"error(s); first: {reasons[0] if reasons else 'unknown'}")


def dims_tuple(d: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a plain tuple (``-1`` for dynamic axes)."""
    return tuple(int(d[i]) for i in range(len(d)))


def _profile(builder: trt.Builder, network: trt.INetworkDefinition,
             spec: TrtBuildSpec) -> trt.IOptimizationProfile:
    inputs: dict[str, tuple[int, ...]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = dims_tuple(tensor.shape)
    unknown = sorted(set(spec.profiles) - set(inputs))
    if unknown:
        raise EngineBuildError(f"{spec.source}: shapes given for {unknown}, which are not "
                               f"inputs of the network (inputs: {sorted(inputs)})")
    missing = sorted(n for n, s in inputs.items() if any(d < 0 for d in s)
                     and n not in spec.profiles)
    if missing:
        raise EngineBuildError(f"{spec.source}: dynamic inputs {missing} have no "
                               "--minShapes/--optShapes/--maxShapes")
    profile = builder.create_optimization_profile()
    trt_mod = import_tensorrt()
    for name, (lo, mid, hi) in spec.profiles.items():
        if len(lo) != len(inputs[name]):
            raise EngineBuildError(f"{spec.source}: shape rank {len(lo)} for {name}, the "
                                   f"network has rank {len(inputs[name])}")
        profile.set_shape(name, trt_mod.Dims(list(lo)), trt_mod.Dims(list(mid)),
                          trt_mod.Dims(list(hi)))
    return profile


def _member(trt_mod: Any, enum: str, name: str, since: str, setting: str) -> Any:
    """``trt_mod.<enum>.<name>``, or EngineBuildError naming the setting and the TensorRT
    version that has it."""
    value = getattr(getattr(trt_mod, enum, None), name, None)
    if value is None:
        raise EngineBuildError(
            f"{setting} needs TensorRT {since} ({enum}.{name}); this TensorRT is "
            f"{getattr(trt_mod, '__version__', 'unknown')}: use an image with TensorRT "
            f"{since}, or remove {setting} from trt_info.json")
    return value


@dataclass(frozen=True)
class BuildSettings:
    """What one build sets on TensorRT, resolved against the installed version."""

    precision: str  # effective: fp16 when asked for or when trt_info.json has --fp16
    network_flags: int  # create_network() flags (STRONGLY_TYPED on TensorRT without FP16)
    strongly_typed: bool
    set_flags: tuple[Any, ...]
    clear_flags: tuple[Any, ...]
    hardware_level: Any | None


def resolve_settings(trt_mod: Any, spec: TrtBuildSpec, precision: str) -> BuildSettings:
    """Map the build spec onto the installed TensorRT; EngineBuildError for anything it lacks.

    TensorRT 10 builds weakly typed networks (``BuilderFlag.FP16`` lets it pick FP16 kernels).
    A TensorRT without ``BuilderFlag.FP16`` (11 and later) builds strongly typed networks
    only, whose precision is the ONNX's own tensor types: an FP32 build works unchanged, an
    FP16 build of an FP32 ONNX is refused (convert the ONNX to FP16 first, or build fp32).
    """
    eff = effective_precision(precision, spec.to_json())
    version = str(getattr(trt_mod, "__version__", "0"))
    if version_tuple(version)[:2] < TENSORRT_MIN_VERSION:
        logger.warning("TensorRT %s is older than %s, which the A2F-3D models need; the "
                       "build may fail", version, ".".join(map(str, TENSORRT_MIN_VERSION)))
    has_fp16_flag = getattr(getattr(trt_mod, "BuilderFlag", None), "FP16", None) is not None
    set_flags: list[Any] = []
    clear_flags: list[Any] = []
    network_flags = 0
    strongly_typed = not has_fp16_flag
    if strongly_typed:
        if eff == "fp16":
            why = "trt_info.json has --fp16" if spec.fp16 else "--precision fp16"
            raise EngineBuildError(
                f"precision fp16 ({why}) needs BuilderFlag.FP16, which TensorRT "
                f"{version} no longer has (removed in TensorRT 11; networks are strongly "
                "typed there and take their precision from the ONNX): build with "
                "--precision fp32, convert network.onnx to FP16, or use TensorRT 10.x")
        flag = _member(trt_mod, "NetworkDefinitionCreationFlag", "STRONGLY_TYPED", "9.0",
                       "a strongly typed network")
        network_flags = 1 << int(flag)
    elif eff == "fp16":
        set_flags.append(trt_mod.BuilderFlag.FP16)
    if spec.no_tf32:
        clear_flags.append(_member(trt_mod, "BuilderFlag", "TF32", "8.0", "--noTF32"))
    if spec.version_compatible:
        set_flags.append(_member(trt_mod, "BuilderFlag", "VERSION_COMPATIBLE", "8.6",
                                 "--versionCompatible"))
    level = None
    if spec.hardware_compatibility_level == "ampere+":
        level = _member(trt_mod, "HardwareCompatibilityLevel", "AMPERE_PLUS", "8.6",
                        "--hardwareCompatibilityLevel=ampere+")
    elif spec.hardware_compatibility_level == "sameComputeCapability":
        level = _member(trt_mod, "HardwareCompatibilityLevel", "SAME_COMPUTE_CAPABILITY",
                        "10.9", "--hardwareCompatibilityLevel=sameComputeCapability")
    return BuildSettings(eff, network_flags, strongly_typed, tuple(set_flags),
                         tuple(clear_flags), level)


def build_trt_plan(onnx_path: str | os.PathLike[str], spec: TrtBuildSpec, precision: str,
                   timing_cache: Path | None = None) -> bytes:
    """Parse the ONNX and build a serialised plan; raises EngineBuildError with the reason."""
    trt_mod = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX not found: {onnx_path}")
    settings = resolve_settings(trt_mod, spec, precision)
    pools = {}
    for pool, size in spec.memory_pools_bytes.items():
        pools[_member(trt_mod, "MemoryPoolType", MEMORY_POOLS[pool], "10.0",
                      f"--memPoolSize={pool}")] = size
    trt_logger = make_logger(trt_mod)
    builder: trt.Builder = trt_mod.Builder(trt_logger)
    network = builder.create_network(settings.network_flags)
    _parse(trt_mod, network, trt_logger, onnx_path)

    config = builder.create_builder_config()
    for pool_type, size in pools.items():
        config.set_memory_pool_limit(pool_type, size)
    for flag in settings.set_flags:
        config.set_flag(flag)
    for flag in settings.clear_flags:
        config.clear_flag(flag)
    if settings.hardware_level is not None:
        config.hardware_compatibility_level = settings.hardware_level
    if spec.builder_optimization_level is not None:
        config.builder_optimization_level = spec.builder_optimization_level
    if config.add_optimization_profile(_profile(builder, network, spec)) < 0:
        raise EngineBuildError(f"{onnx_path}: TensorRT rejected the optimisation profile "
                               "(see [TRT] [E] above)")
    logger.info("TensorRT %s build of %s: precision %s%s, flags %s", trt_mod.__version__,
                onnx_path, settings.precision,
                " (strongly typed network)" if settings.strongly_typed else "",
                [getattr(f, "name", str(f)) for f in settings.set_flags] or "none")

    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            logger.warning("timing cache %s does not match this target; starting a new one",
                           timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    try:
        plan = builder.build_serialized_network(network, config)
    except MemoryError as err:
        raise EngineBuildError(f"{onnx_path}: out of memory while building ({err})") from err
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT build failed (errors logged above as "
                               "[TRT] [E]; 'Out of memory' means a larger GPU is needed)")
    if timing_cache is not None:
        try:
            timing_cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
        except OSError as err:
            logger.warning("could not save timing cache %s: %s", timing_cache, err)
    return bytes(plan)
