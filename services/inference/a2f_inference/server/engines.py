"""Which engine a model version is served with, and how many workers run it.

One selection order for the whole server: TensorRT first when this machine can run it, then
ONNX Runtime, each only with an engine that the volume's rule
(:func:`a2f_volume.engine_record.check_engine`) accepts for this process's own target; under
the ``onnx-fallback`` policy ``network.onnx`` itself when no built engine is valid. The hot
reloader asks :class:`EngineChecker` whether a version has a valid engine, the loader asks
the same object for the engine itself, and both share its hash cache, so an unchanged engine
or ONNX file is hashed once per process, not once per look.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from a2f_engine.base import Engine
from a2f_engine.loader import load_engine
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine, cpu_plan
from a2f_engine.serving_graph import ServingGraphInfo
from a2f_engine.serving_plan import composed_onnxruntime, info_from_record, uses_serving_graph
from a2f_engine.targets import choose_backend, current_target
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.modes import EnginePolicy, as_engine_policy, needs_built_engine
from a2f_volume import layout
from a2f_volume.engine_record import EngineCheck, check_engine
from a2f_volume.errors import A2FError, UnavailableError
from a2f_volume.hashing import HashCache
from a2f_volume.model_folder import ModelFolder

log = logging.getLogger(__name__)

#: Automatic inference workers with TensorRT: one batch's copies and post-processing overlap
#: the other's GPU work.
TENSORRT_AUTO_WORKERS = 2


def worker_plan(backend: str, config: ServerConfig) -> tuple[int, int]:
    """``(inference workers, ONNX Runtime intra-op threads per worker)`` for ``backend``."""
    if backend == layout.BACKEND_TENSORRT:
        return config.inference_workers or TENSORRT_AUTO_WORKERS, 0
    return cpu_plan(config.inference_workers, config.ort_threads)


def model_max_batch(folder: Path, configured: int) -> int:
    """The cap on the cross-stream batch: configured, else ``trt_info.json`` defaults, else 8."""
    if configured > 0:
        return configured
    try:
        info = json.loads((folder / "trt_info.json").read_text())
        return max(1, int(info["defaults"]["MAX_BATCH_SIZE"]))
    except (OSError, KeyError, TypeError, ValueError):
        return 8


@dataclass(frozen=True)
class EngineStatus:
    """Whether a version directory has an engine this process may serve, and why not."""

    fingerprint: str | None  # "sha256:<engine sha256>" when valid, like LoadedModel's
    backend: str
    reason: str

    @property
    def valid(self) -> bool:
        return self.fingerprint is not None


@dataclass
class EngineChoice:
    """The engine a version is served with."""

    engine: Engine
    backend: str
    fingerprint: str
    source: str
    workers: int = 1  # batches run side by side
    serving: ServingGraphInfo | None = None  # the engine runs this serving graph


class EngineChecker:
    """:func:`check_engine` with this process's own target, backends in serving order.

    Calling it says whether a version directory has a valid built engine
    (:class:`EngineStatus`); :meth:`load` loads the engine a version is served with. File
    hashes are cached by file identity, so rescans and loads do not re-read unchanged files.
    """

    def __init__(self, hash_cache: HashCache | None = None, *,
                 tensorrt_only: bool = False) -> None:
        self.hash_cache = hash_cache if hash_cache is not None else HashCache()
        self.tensorrt_only = tensorrt_only
        self._backends: list[str] | None = None
        self._why = ""  # why TensorRT is not among them

    @classmethod
    def for_policy(cls, policy: EnginePolicy, hash_cache: HashCache | None = None
                   ) -> EngineChecker:
        """The checker of an engine policy: ``require-tensorrt`` considers TensorRT only."""
        return cls(hash_cache, tensorrt_only=policy == "require-tensorrt")

    def backends(self) -> list[str]:
        """Backends in the order engines are tried (TensorRT first when usable here)."""
        if self._backends is None:
            backends = [layout.BACKEND_ONNXRUNTIME]
            try:
                best, why = choose_backend("auto")
            except (RuntimeError, ValueError) as err:
                best, why = layout.BACKEND_ONNXRUNTIME, str(err)
            if best == layout.BACKEND_TENSORRT:
                backends.insert(0, best)
            else:
                self._why = why
            if self.tensorrt_only:
                backends = [b for b in backends if b == layout.BACKEND_TENSORRT]
                if not backends:
                    self._why = ("the engine policy is require-tensorrt and TensorRT is not "
                                 f"usable here ({why})")
                    log.error("%s: no model will be served", self._why)
            log.info("engines are checked for backends %s (%s)", backends, why)
            self._backends = backends
        return self._backends

    def _check(self, version_dir: Path, backend: str) -> EngineCheck:
        target = current_target(version_dir, backend)
        return check_engine(layout.ModelPaths(version_dir), backend, target, self.hash_cache)

    def __call__(self, version_dir: Path) -> EngineStatus:
        """The first backend with a valid built engine, or why there is none."""
        reasons = []
        for backend in self.backends():
            try:
                check = self._check(version_dir, backend)
            except (RuntimeError, ValueError, OSError, A2FError) as err:
                reasons.append(f"{backend}: {err}")
                continue
            if check.record is not None:
                return EngineStatus("sha256:" + check.record.engine_sha256, backend,
                                    check.reason)
            reasons.append(f"{backend}: {check.reason}")
        if self._why and self.tensorrt_only:
            reasons.insert(0, self._why)
        return EngineStatus(None, "", "; ".join(reasons) or "no backend")

    def load(self, folder: Path, config: ServerConfig, max_batch: int,
             model: ModelFolder | None = None, name: str | None = None) -> EngineChoice:
        """A valid built engine when there is one (in :meth:`backends` order);
        ``network.onnx`` under the ``onnx-fallback`` policy, else :class:`UnavailableError`.

        ``model`` (the loaded face model folder) enables the serving graph under
        ``onnx-fallback``: a model whose kind is served through its serving graph on ONNX
        Runtime (:func:`~a2f_engine.serving_plan.uses_serving_graph`) gets it composed here,
        with the noise policy ``config.diffusion_noise`` names for ``name``."""
        reasons: list[str] = []
        choice = self._built(folder, config, max_batch, reasons, name or folder.name)
        if choice is not None:
            return choice
        policy = as_engine_policy(config.engine_policy)
        if self.tensorrt_only or policy == "require-tensorrt":
            raise UnavailableError(
                f"model {folder.name}: no valid TensorRT engine ({'; '.join(reasons)}) and "
                "the engine policy is require-tensorrt: the model is not served on ONNX "
                "Runtime; build a TensorRT engine on this GPU type (a2f-engine-builder "
                "--backend tensorrt)")
        if needs_built_engine(policy):
            raise UnavailableError(
                f"model {folder.name}: no valid built engine ({'; '.join(reasons)}) and the "
                "engine policy is require-built: run a2f-engine-builder, or use "
                "--engine-policy onnx-fallback")
        log.info("model %s: no valid built engine (%s); serving %s with ONNX Runtime",
                 folder.name, "; ".join(reasons) or "none", layout.ONNX_NAME)
        onnx = folder / layout.ONNX_NAME
        workers, threads = worker_plan(layout.BACKEND_ONNXRUNTIME, config)
        fingerprint = "sha256:" + self.hash_cache.sha256(onnx)
        if model is not None and uses_serving_graph(model.kind, layout.BACKEND_ONNXRUNTIME):
            noise = config.noise_policy(name or folder.name)
            engine, info = composed_onnxruntime(model, noise, max_batch=max_batch,
                                                intra_op_threads=threads,
                                                seed=config.diffusion_noise_seed)
            return EngineChoice(engine, engine.backend, fingerprint, f"{onnx} (serving graph, "
                                f"noise {info.noise or '-'})", workers, info)
        engine = OnnxRuntimeEngine(onnx, max_batch=max_batch, intra_op_threads=threads)
        return EngineChoice(engine, engine.backend, fingerprint, str(onnx), workers)

    def _built(self, folder: Path, config: ServerConfig, max_batch: int,
               reasons: list[str], name: str) -> EngineChoice | None:
        paths = layout.ModelPaths(folder)
        backends = self.backends()
        if self._why:
            reasons.append(self._why)
        for backend in backends:
            try:
                check = self._check(folder, backend)
            except (RuntimeError, ValueError, OSError, A2FError) as err:
                reasons.append(f"{backend}: {err}")
                continue
            if check.record is None:
                reasons.append(f"{backend}: {check.reason}")
                continue
            workers, threads = worker_plan(backend, config)
            try:
                serving = info_from_record(check.record.serving_graph)
                engine = load_engine(paths, backend, max_batch=max_batch,
                                     intra_op_threads=threads)
            except (A2FError, OSError, RuntimeError, ValueError) as err:
                reasons.append(f"{backend}: cannot load: {err}")
                continue
            if serving is not None and serving.noise is not None:
                wanted = config.noise_policy(name)
                if wanted != serving.noise:
                    log.warning("model %s: the built engine's serving graph has noise policy "
                                "%s, the setting asks for %s; the engine's policy is served "
                                "(rebuild the engine with the builder's noise setting to "
                                "change it)", folder.name, serving.noise, wanted)
            return EngineChoice(engine, backend, "sha256:" + check.record.engine_sha256,
                                str(paths.engine(backend)), workers, serving)
        return None
