"""Configuration of the engine-builder: one typed dataclass, every field also an env var."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from a2f_config import EnvLoader
from a2f_engine.noise import parse_noise_policies
from a2f_engine.targets import PRECISIONS
from a2f_volume.errors import InvalidArgumentError

ENV_PREFIX = "A2F_ENGINE_BUILDER_"
Backend = Literal["auto", "tensorrt", "onnxruntime"]
Precision = Literal["fp32", "fp16"]
BACKEND_CHOICES: tuple[Backend, ...] = get_args(Backend)
PRECISION_CHOICES: tuple[Precision, ...] = get_args(Precision)
_FALSE = {"", "0", "false", "no", "off", "n"}

#: ``A2F_ENGINE_BUILDER_<FIELD>``; the models root also from the seed's ``A2F_MODEL_DATA_PATH``
#: (the prefixed name wins when both are set).
ENV = EnvLoader(ENV_PREFIX, {"models_root": (ENV_PREFIX + "MODELS_ROOT", "A2F_MODEL_DATA_PATH")})
#: The seed's flags, read with :func:`env_flag` when the prefixed variable is not set.
SEED_FLAGS = {"skip_build": "SKIP_TRT_BUILD", "force_rebuild": "FORCE_TRT_REBUILD"}


def env_flag(value: str | None) -> bool:
    """The seed's flags (``SKIP_TRT_BUILD``, ``FORCE_TRT_REBUILD``): set and not false-ish."""
    if value is None:
        return False
    return value.strip().lower() not in _FALSE


@dataclass
class BuilderConfig:
    """Settings of ``a2f-engine-builder``.

    models_root: the volume (``A2F_MODEL_DATA_PATH``, default ``/data/models``).
    backend: ``auto`` (TensorRT when it imports and a GPU is visible, else ONNX Runtime),
        ``tensorrt`` or ``onnxruntime``. Default ``auto``.
    precision: ``fp32`` (default, as NVIDIA's trtexec invocation) or ``fp16`` (TensorRT only).
    once: build what is missing or stale, then exit (init-container mode). Default False.
    skip_build: the seed's ``SKIP_TRT_BUILD``: build nothing, only report. Default False.
    force_rebuild: the seed's ``FORCE_TRT_REBUILD``: rebuild every model once at start,
        ignoring valid engines and the engine cache. Default False.
    poll_interval_s: period of the full volume rescan (always on; the only change detection
        when inotify is unavailable or disabled). Default 30.
    inotify: use inotify (watchdog) for prompt wake-ups. Default True.
    debounce_s: quiet time after a change before acting. Default 2.
    backoff_initial_s / backoff_max_s: retry delay after a failed build, doubled per
        consecutive failure of the same model. Defaults 10 / 600.
    metrics_port: Prometheus metrics port; -1 disables, 0 picks a free port (the same rule
        as the other two services). Default 9102.
    engine_cache_keep: cached engines in ``.a2f/engines`` that no version uses, kept for a
        quick rollback; those a version uses are always kept. Default 1.
    sweep_interval_s: period of the sweep of dead builders' temporary files. Default 600.
    metrics_host: bind address for metrics. Default ``0.0.0.0``.
    ort_threads: ONNX Runtime intra-op threads for build and verification (0 = all cores).
    log_level: ``INFO`` by default.
    diffusion_noise: noise policy composed into diffusion serving graphs: a default, then
        ``model=policy`` overrides (``constant`` or ``fresh``; docs/serving-graph.md).
        Default ``constant``.
    diffusion_noise_seed: seed of the noise used to verify serving graphs. Default 0.
    engine_cache: shared engine cache ``s3://BUCKET/PREFIX`` (empty: off). Before building,
        an engine for the same ONNX bytes and target is downloaded from there and verified;
        after a local build the engine is uploaded. Default off.
    engine_cache_endpoint_url: S3 endpoint of the engine cache (MinIO, ...); empty: AWS.
    """

    models_root: Path = Path("/data/models")
    backend: Backend = "auto"
    precision: Precision = "fp32"
    once: bool = False
    skip_build: bool = False
    force_rebuild: bool = False
    poll_interval_s: float = 30.0
    inotify: bool = True
    debounce_s: float = 2.0
    backoff_initial_s: float = 10.0
    backoff_max_s: float = 600.0
    metrics_port: int = 9102
    metrics_host: str = "0.0.0.0"
    ort_threads: int = 0
    log_level: str = "INFO"
    engine_cache_keep: int = 1
    sweep_interval_s: float = 600.0
    diffusion_noise: str = "constant"
    diffusion_noise_seed: int = 0
    engine_cache: str = ""
    engine_cache_endpoint_url: str = ""

    def __post_init__(self) -> None:
        self.models_root = Path(self.models_root)
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"backend {self.backend!r}: expected one of {BACKEND_CHOICES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {PRECISIONS}")
        for name in ("poll_interval_s", "backoff_initial_s", "backoff_max_s",
                     "sweep_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.debounce_s < 0:
            raise ValueError(f"debounce_s must be >= 0, got {self.debounce_s}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port {self.metrics_port} is out of range: allowed -1 "
                             "(off), 0 (any free port) .. 65535")
        if self.engine_cache_keep < 0:
            raise ValueError(f"engine_cache_keep must be >= 0, got {self.engine_cache_keep}")
        if self.engine_cache and not self.engine_cache.startswith("s3://"):
            raise ValueError(f"engine_cache {self.engine_cache!r}: expected s3://BUCKET/PREFIX")
        if self.ort_threads < 0:
            raise ValueError(f"ort_threads must be >= 0, got {self.ort_threads}")
        try:
            parse_noise_policies(self.diffusion_noise)
        except InvalidArgumentError as err:  # names the bad item and the allowed policies
            raise ValueError(f"diffusion_noise: {err}") from err
        if self.diffusion_noise_seed < 0:
            raise ValueError(f"diffusion_noise_seed must be >= 0, got "
                             f"{self.diffusion_noise_seed}")

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return ENV.env_name(field_name)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> BuilderConfig:
        """Defaults overridden by ``A2F_ENGINE_BUILDER_<FIELD>`` variables and the seed's
        ``A2F_MODEL_DATA_PATH``, ``SKIP_TRT_BUILD`` and ``FORCE_TRT_REBUILD``, then by
        ``overrides`` (typed flags; None = not given)."""
        env = os.environ if env is None else env
        values = ENV.read(cls, env)
        for name, var in SEED_FLAGS.items():
            values.setdefault(name, env_flag(env.get(var)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
