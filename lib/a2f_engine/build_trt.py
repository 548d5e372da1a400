"""TensorRT build through its Python API, with the settings of the model's ``trt_info.json``.

Equivalent to ``trtexec --onnx=network.onnx --saveEngine=network.trt <trt_build_param...>``
(see :mod:`a2f_engine.trt_flags`), plus a timing cache kept on the volume per target and
reused across builds. Needs the TensorRT runtime library and a GPU; importing this module
does not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from a2f_engine.errors import EngineBuildError
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
    for name, (lo, mid, hi) in spec.profiles.items():
        if len(lo) != len(inputs[name]):
            raise EngineBuildError(f"{spec.source}: shape rank {len(lo)} for {name}, the "
                                   f"network has rank {len(inputs[name])}")
        trt_mod = import_tensorrt()
        profile.set_shape(name, trt_mod.Dims(list(lo)), trt_mod.Dims(list(mid)),
                          trt_mod.Dims(list(hi)))
    return profile


def build_trt_plan(onnx_path: str | os.PathLike[str], spec: TrtBuildSpec, precision: str,
                   timing_cache: Path | None = None) -> bytes:
    """Parse the ONNX and build a serialised plan; raises EngineBuildError with the reason."""
    trt_mod = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX not found: {onnx_path}")
    trt_logger = make_logger(trt_mod)
    builder: trt.Builder = trt_mod.Builder(trt_logger)
    network = builder.create_network(0)
    _parse(trt_mod, network, trt_logger, onnx_path)

    config = builder.create_builder_config()
    for pool, size in spec.memory_pools_bytes.items():
        config.set_memory_pool_limit(getattr(trt_mod.MemoryPoolType, MEMORY_POOLS[pool]), size)
    if precision == "fp16" or spec.fp16:
        config.set_flag(trt_mod.BuilderFlag.FP16)
    if spec.no_tf32:
        config.clear_flag(trt_mod.BuilderFlag.TF32)
    if spec.version_compatible:
        config.set_flag(trt_mod.BuilderFlag.VERSION_COMPATIBLE)
    if spec.hardware_compatibility_level == "ampere+":
        config.hardware_compatibility_level = trt_mod.HardwareCompatibilityLevel.AMPERE_PLUS
    elif spec.hardware_compatibility_level == "sameComputeCapability":
        config.hardware_compatibility_level = (
            trt_mod.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY)
    if spec.builder_optimization_level is not None:
        config.builder_optimization_level = spec.builder_optimization_level
    config.add_optimization_profile(_profile(builder, network, spec))

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
