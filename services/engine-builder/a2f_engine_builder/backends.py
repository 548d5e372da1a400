"""The two build backends behind one small interface: target, build, load."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from a2f_engine.base import Engine
from a2f_engine.serving_build import serving_build_spec
from a2f_engine.serving_graph import ServingGraphInfo, info_path
from a2f_engine.targets import (
    GpuInfo,
    Target,
    gpu_info,
    onnxruntime_target,
    tensorrt_target,
    tensorrt_version,
)
from a2f_engine.trt_flags import load_trt_info
from a2f_volume.layout import BACKEND_ONNXRUNTIME, BACKEND_TENSORRT
from a2f_volume.model_kind import model_family
from a2f_volume.publish import atomic_write_bytes

logger = logging.getLogger(__name__)


class BuildBackend(Protocol):
    backend: str
    label: str  # "TRT" / "ORT": the seed's log lines say "TRT"
    precision: str  # what the engine computes in: fp32 / fp16

    def target(self, folder: Path) -> Target: ...

    def build(self, onnx: Path, folder: Path, out: Path, timing_cache_dir: Path
              ) -> dict[str, Any]: ...

    def load(self, engine: Path, folder: Path) -> Engine: ...

    def opt_shapes(self, folder: Path) -> dict[str, tuple[int, ...]]: ...

    def marker(self) -> str | None: ...


def _opt_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    try:
        spec = load_trt_info(folder)
    except Exception:  # the build itself reports trt_info problems
        return {}
    return {k: v[1] for k, v in spec.profiles.items()}


class OnnxRuntimeBackend:
    backend = BACKEND_ONNXRUNTIME
    label = "ORT"

    def __init__(self, precision: str = "fp32", threads: int = 0) -> None:
        if precision != "fp32":
            logger.warning("precision %s applies to TensorRT only; ONNX Runtime builds fp32",
                           precision)
        self.precision = "fp32"
        self.threads = threads
        self._target = onnxruntime_target(self.precision)

    def target(self, folder: Path) -> Target:
        return self._target

    def build(self, onnx: Path, folder: Path, out: Path, timing_cache_dir: Path
              ) -> dict[str, Any]:
        from a2f_engine.build_ort import build_ort_model

        build_ort_model(onnx, out, self.threads)
        return {}

    def load(self, engine: Path, folder: Path) -> Engine:
        from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine

        max_batch = load_trt_info(folder).max_batch if (folder / "trt_info.json").is_file() else 8
        return OnnxRuntimeEngine(engine, max_batch=max_batch, intra_op_threads=self.threads,
                                 optimize=False)

    def opt_shapes(self, folder: Path) -> dict[str, tuple[int, ...]]:
        return _opt_shapes(folder)

    def marker(self) -> str | None:
        return None


class TensorRTBackend:
    backend = BACKEND_TENSORRT
    label = "TRT"

    def __init__(self, precision: str = "fp32", gpu: GpuInfo | None = None,
                 trt_version: str | None = None) -> None:
        self.precision = precision
        if gpu is None:
            gpu, why = gpu_info()
            if gpu is None:
                raise RuntimeError(f"TensorRT backend needs a GPU: {why}")
        if trt_version is None:
            trt_version, why = tensorrt_version()
            if trt_version is None:
                raise RuntimeError(f"TensorRT backend unavailable: {why}")
        self.gpu = gpu
        self.trt_version = trt_version

    def precision_for(self, folder: Path) -> str:
        """Audio2Emotion models build in FP32 only, as the NIM builds them."""
        return "fp32" if model_family(folder) == "emotion" else self.precision

    def target(self, folder: Path) -> Target:
        return tensorrt_target(self.gpu, self.trt_version, self.precision_for(folder),
                               load_trt_info(folder).to_json())

    def timing_cache_path(self, timing_cache_dir: Path) -> Path:
        machine = Target(BACKEND_TENSORRT, {
            "gpu_name": self.gpu.name, "compute_capability": self.gpu.compute_capability,
            "tensorrt_version": self.trt_version,
            "cuda_runtime_version": self.gpu.cuda_runtime_version})
        return timing_cache_dir / f"{self.gpu.sm}-trt{self.trt_version}-{machine.fingerprint}.cache"

    def build(self, onnx: Path, folder: Path, out: Path, timing_cache_dir: Path
              ) -> dict[str, Any]:
        """Build ``onnx``: the network, or a composed serving graph (recognised by its
        description beside it, ``<graph>.json``), whose optimisation profiles then come from
        :func:`~a2f_engine.serving_build.serving_build_spec`."""
        from a2f_engine.build_trt import build_trt_plan

        spec = load_trt_info(folder)
        described = info_path(onnx)
        if described.is_file():
            spec = serving_build_spec(spec, ServingGraphInfo.load(described))

        cache = self.timing_cache_path(timing_cache_dir)
        precision = self.precision_for(folder)
        plan = build_trt_plan(onnx, spec, precision, cache)
        atomic_write_bytes(out, plan)
        return {"trtexec_command": spec.trtexec_command(
            str(onnx), str(folder / "network.trt"), precision, str(cache))}

    def load(self, engine: Path, folder: Path) -> Engine:
        from a2f_engine.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(engine,
                              version_compatible=load_trt_info(folder).version_compatible)

    def opt_shapes(self, folder: Path) -> dict[str, tuple[int, ...]]:
        return _opt_shapes(folder)

    def marker(self) -> str | None:
        return self.gpu.sm


def make_backend(backend: str, precision: str, ort_threads: int = 0) -> BuildBackend:
    if backend == BACKEND_TENSORRT:
        return TensorRTBackend(precision)
    if backend == BACKEND_ONNXRUNTIME:
        return OnnxRuntimeBackend(precision, ort_threads)
    raise ValueError(f"unknown backend {backend!r}")
