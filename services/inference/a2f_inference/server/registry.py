"""The models a server holds: per name, the version that takes new streams.

A :class:`LoadedModel` is one version of one model folder, loaded: its engine, the pipeline
runtime and the batch scheduler. Streams hold a reference to the LoadedModel they started on
(:meth:`ModelRegistry.acquire` / :meth:`ModelRegistry.release`), so a hot reload can put a
new version in place for NEW streams (:meth:`ModelRegistry.install`) while open streams
finish on theirs; a replaced version is closed when its last stream ends. At most two
versions of a model are resident: the serving one and one draining.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2f_engine.base import Engine
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.metrics import InferenceMetrics
from a2f_inference.server.reload import trim_memory
from a2f_volume import layout
from a2f_volume.errors import (
    A2FError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from a2f_volume.hashing import sha256_file

log = logging.getLogger(__name__)

ReadyCallback = Callable[[Any], None]


def _optional(module: str, name: str) -> Any:
    """An attribute of a module that another part of the project may not have written yet."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def folder_version(folder: Path) -> str:
    """Version id of a model folder: model-sync's record when present, else a content id.

    The fallback is a digest of the folder's real path and the size and mtime of each
    published file, so that replacing a file yields a new id.
    """
    current_version = _optional("a2f_volume.versions", "current_version")
    if current_version is not None:
        try:
            v = current_version(folder)
            if v:
                return str(v)
        except (OSError, A2FError, ValueError):
            log.debug("no version record in %s", folder, exc_info=True)
    real = folder.resolve()
    h = hashlib.sha256(str(real).encode())
    for p in sorted(real.iterdir()):
        if p.is_file() and not layout.is_temp_name(p.name):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return "local-" + h.hexdigest()[:12]


def model_max_batch(folder: Path, configured: int) -> int:
    """The cap on the cross-stream batch: configured, else ``trt_info.json`` defaults, else 8."""
    if configured > 0:
        return configured
    try:
        info = json.loads((folder / "trt_info.json").read_text())
        return max(1, int(info["defaults"]["MAX_BATCH_SIZE"]))
    except (OSError, KeyError, TypeError, ValueError):
        return 8


@dataclass
class EngineChoice:
    engine: Engine
    backend: str
    fingerprint: str
    source: str
    workers: int = 1  # batches run side by side


#: Automatic inference workers with TensorRT: one batch's copies and post-processing overlap
#: the other's GPU work.
TENSORRT_AUTO_WORKERS = 2


def worker_plan(backend: str, config: ServerConfig) -> tuple[int, int]:
    """``(inference workers, ONNX Runtime intra-op threads per worker)`` for ``backend``."""
    if backend == layout.BACKEND_TENSORRT:
        return config.inference_workers or TENSORRT_AUTO_WORKERS, 0
    from a2f_engine.onnxruntime_engine import cpu_plan

    return cpu_plan(config.inference_workers, config.ort_threads)


def _built_engine(folder: Path, config: ServerConfig, max_batch: int,
                  reasons: list[str]) -> EngineChoice | None:
    """A valid engine built for this machine (TensorRT first when usable, then ORT)."""
    try:
        from a2f_engine.loader import load_engine
        from a2f_engine.targets import choose_backend, current_target
        from a2f_volume.engine_record import check_engine
    except ImportError as err:  # the engine-builder's modules are not installed
        reasons.append(f"engine records unsupported here ({err})")
        return None
    paths = layout.ModelPaths(folder)
    backends = [layout.BACKEND_ONNXRUNTIME]
    try:
        best, why = choose_backend("auto")
        if best == layout.BACKEND_TENSORRT:
            backends.insert(0, best)
        else:
            reasons.append(why)
    except (RuntimeError, ValueError) as err:
        reasons.append(str(err))
    for backend in backends:
        try:
            target = current_target(folder, backend)
            check = check_engine(paths, backend, target)
        except (RuntimeError, ValueError, OSError) as err:
            reasons.append(f"{backend}: {err}")
            continue
        if check.record is None:
            reasons.append(f"{backend}: {check.reason}")
            continue
        workers, threads = worker_plan(backend, config)
        try:
            engine = load_engine(paths, backend, max_batch=max_batch, intra_op_threads=threads)
        except (A2FError, OSError, RuntimeError) as err:
            reasons.append(f"{backend}: cannot load: {err}")
            continue
        return EngineChoice(engine, backend, "sha256:" + check.record.engine_sha256,
                            str(paths.engine(backend)), workers)
    return None


def load_engine_for(folder: Path, config: ServerConfig, max_batch: int) -> EngineChoice:
    """A valid built engine when there is one; ``network.onnx`` under ``onnx-fallback``."""
    reasons: list[str] = []
    choice = _built_engine(folder, config, max_batch, reasons)
    if choice is not None:
        return choice
    if config.engine_policy == "require-built":
        raise UnavailableError(
            f"model {folder.name}: no valid built engine ({'; '.join(reasons)}) and the "
            "engine policy is require-built: run a2f-engine-builder, or use "
            "--engine-policy onnx-fallback")
    log.info("model %s: no valid built engine (%s); serving %s with ONNX Runtime",
             folder.name, "; ".join(reasons) or "none", layout.ONNX_NAME)
    from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine

    onnx = folder / layout.ONNX_NAME
    workers, threads = worker_plan(layout.BACKEND_ONNXRUNTIME, config)
    engine = OnnxRuntimeEngine(onnx, max_batch=max_batch, intra_op_threads=threads)
    return EngineChoice(engine, engine.backend, "sha256:" + sha256_file(onnx), str(onnx),
                        workers)


@dataclass
class LoadedModel:
    """One loaded version of one model folder."""

    name: str
    folder: Path
    version: str
    kind: str
    identities: tuple[str, ...]
    backend: str
    fingerprint: str
    runtime: Any
    scheduler: Any
    engine: Engine
    max_batch: int
    lookahead_s: float = 0.0
    loaded_at: float = field(default_factory=time.time)
    open_streams: int = 0
    retired: bool = False
    closed: bool = False
    _listeners: dict[int, ReadyCallback] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_ready(self, session: Any) -> None:
        """Scheduler callback (worker thread): forwards to the stream that owns ``session``."""
        cb = self._listeners.get(id(session))
        if cb is not None:
            cb(session)

    def listen(self, session: Any, callback: ReadyCallback) -> None:
        self._listeners[id(session)] = callback

    def unlisten(self, session: Any) -> None:
        self._listeners.pop(id(session), None)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        log.info("model %s version %s: released", self.name, self.version)
        try:
            self.scheduler.stop()
        finally:
            self.engine.close()


class _BatchMetrics:
    """Scheduler observer: batch size, queue wait, inference and post-processing time of one
    model."""

    def __init__(self, metrics: InferenceMetrics, model: str) -> None:
        self._size = metrics.batch_size.labels(model)
        self._wait = metrics.queue_wait.labels(model)
        self._infer = metrics.inference_time.labels(model)
        self._post = metrics.postprocess_time.labels(model)
        self._post_wait = metrics.postprocess_wait.labels(model)

    def on_batch(self, stats: Any) -> None:
        self._size.observe(stats.size)
        for w in stats.queue_wait_s:
            self._wait.observe(w)
        self._infer.observe(stats.inference_s)
        self._post.observe(stats.postprocess_s)
        self._post_wait.observe(stats.postprocess_wait_s)


def _warm_up(runtime: Any) -> None:
    """One short silent stream per identity before the model takes traffic: the first stream
    otherwise pays for per-identity caches and the engine's first runs (seconds on full-size
    models), and every stream open at that moment waits with it."""
    from a2f_inference.pipeline.scheduler import run_offline

    t0 = time.perf_counter()
    silence = bytes(2 * 16000 // 2)
    for identity in runtime.identities or (None,):
        run_offline(runtime, silence, 16000, identity=identity, timeout_s=300)
    log.info("model %s warmed up in %.1fs", runtime.name, time.perf_counter() - t0)


def load_model(folder: Path, config: ServerConfig,
               metrics: InferenceMetrics | None = None, name: str | None = None) -> LoadedModel:
    """Load a model folder: parse it, load its engine, start its runtime and scheduler.

    ``name`` is the model's name when ``folder`` is a pinned version directory (whose own
    name is the version id); default the folder's name.
    """
    from a2f_inference.pipeline.runtime import ModelRuntime
    from a2f_inference.pipeline.scheduler import BatchScheduler

    t0 = time.perf_counter()
    name = name or folder.name
    version = folder_version(folder)
    max_batch = model_max_batch(folder, config.max_batch)
    choice = load_engine_for(folder, config, max_batch)
    try:
        runtime = ModelRuntime(folder, choice.engine, max_batch=max_batch)
        kind = str(runtime.kind)
        identities = tuple(runtime.identities)
        max_batch = runtime.max_batch
        holder: list[LoadedModel] = []

        def ready(session: Any) -> None:
            if holder:
                holder[0].on_ready(session)

        scheduler = BatchScheduler(
            runtime, max_batch=max_batch, max_wait_s=config.max_wait_s, on_ready=ready,
            observer=_BatchMetrics(metrics, name) if metrics is not None else None,
            pipelined=config.postprocess == "overlap", workers=choice.workers)
        lm = LoadedModel(name=name, folder=folder, version=version, kind=kind,
                         identities=identities, backend=choice.backend,
                         fingerprint=choice.fingerprint, runtime=runtime, scheduler=scheduler,
                         engine=choice.engine, max_batch=max_batch,
                         lookahead_s=float(runtime.lookahead_s))
        holder.append(lm)
        scheduler.start()
        _warm_up(runtime)
    except BaseException:
        choice.engine.close()
        raise
    log.info("model %s version %s loaded: %s, %s engine %s, max batch %d, %d inference "
             "worker(s), identities %s (%.1fs)", name, version, kind, choice.backend,
             choice.fingerprint[:19], max_batch, choice.workers, list(identities) or "-",
             time.perf_counter() - t0)
    return lm


@dataclass
class ModelState:
    """What the admin service reports about one model name."""

    name: str
    state: str
    serving: LoadedModel | None
    draining: list[LoadedModel]
    error: str = ""


class ModelRegistry:
    """Thread-safe map from model name to the LoadedModel taking new streams."""

    def __init__(self, config: ServerConfig, metrics: InferenceMetrics,
                 loader: Callable[..., LoadedModel] = load_model) -> None:
        self.config = config
        self.metrics = metrics
        self._loader = loader
        self._lock = threading.Lock()
        self._serving: dict[str, LoadedModel] = {}
        self._draining: dict[str, list[LoadedModel]] = {}
        self._failed: dict[str, str] = {}
        self._open = 0
        self._accepting = True

    # -- loading -------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every model folder under the root; a folder that fails is logged and listed."""
        folders = layout.list_model_dirs(self.config.models_root)
        log.info("models root %s: %d model folder(s): %s", self.config.models_root,
                 len(folders), [f.name for f in folders])
        for folder in folders:
            self.load(folder)
        if self.config.default_model not in self._serving:
            log.warning("default model %r is not being served (models: %s)",
                        self.config.default_model, sorted(self._serving) or "none")

    def load(self, folder: Path) -> LoadedModel | None:
        """Load ``folder`` and install it for new streams; None (and logged) on failure."""
        try:
            lm = self._loader(folder, self.config, self.metrics)
        except Exception as err:
            msg = err.message if isinstance(err, A2FError) else f"{type(err).__name__}: {err}"
            log.error("model %s: failed to load: %s", folder.name, msg,
                      exc_info=not isinstance(err, A2FError))
            with self._lock:
                self._failed[folder.name] = msg
            return None
        self.install(lm)
        return lm

    def install(self, lm: LoadedModel) -> None:
        """Make ``lm`` take new streams of its name; the previous version drains."""
        with self._lock:
            old = self._serving.get(lm.name)
            self._serving[lm.name] = lm
            self._failed.pop(lm.name, None)
            to_close = None
            if old is not None and old is not lm:
                old.retired = True
                if old.open_streams == 0:
                    to_close = old
                else:
                    self._draining.setdefault(lm.name, []).append(old)
        self.metrics.init_model(lm.name)
        self.metrics.model_info.labels(lm.name, lm.version, lm.kind, lm.backend,
                                       lm.fingerprint).set(1)
        if to_close is not None:
            self._release_model(to_close)

    def _release_model(self, lm: LoadedModel) -> None:
        with contextlib.suppress(KeyError):
            self.metrics.model_info.remove(lm.name, lm.version, lm.kind, lm.backend,
                                           lm.fingerprint)
        lm.close()
        trim_memory()

    # -- hot reload (server.reload.ModelReloader drives these) ----------------------------
    def load_version(self, name: str, version_dir: Path) -> LoadedModel:
        """Load one version of model ``name`` from its pinned directory (raises on failure)."""
        if "name" in inspect.signature(self._loader).parameters:
            return self._loader(version_dir, self.config, self.metrics, name=name)
        lm = self._loader(version_dir, self.config, self.metrics)  # a loader without names
        lm.name = name
        return lm

    def serving_key(self, name: str) -> tuple[str, str] | None:
        """(version, engine fingerprint) of the version taking new streams of ``name``."""
        with self._lock:
            lm = self._serving.get(name)
            return None if lm is None else (lm.version, lm.fingerprint)

    def resident_versions(self, name: str) -> int:
        """Versions of ``name`` in memory: the serving one and those still draining."""
        with self._lock:
            return int(name in self._serving) + len(self._draining.get(name, []))

    def retire(self, name: str) -> bool:
        """``name`` takes no new streams; its open streams finish, then it is released."""
        with self._lock:
            lm = self._serving.pop(name, None)
            self._failed.pop(name, None)
            if lm is None:
                return False
            lm.retired = True
            to_close = lm if lm.open_streams == 0 else None
            if to_close is None:
                self._draining.setdefault(name, []).append(lm)
        if to_close is not None:
            self._release_model(to_close)
        return True

    def record_failure(self, name: str, message: str) -> None:
        """A version of ``name`` failed to load; shown by the admin service while nothing
        of ``name`` is served."""
        with self._lock:
            if name not in self._serving:
                self._failed[name] = message

    # -- streams -------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._serving)

    def get(self, name: str | None) -> LoadedModel:
        model = name or self.config.default_model
        with self._lock:
            lm = self._serving.get(model)
            if lm is None:
                failed = self._failed.get(model)
                available = sorted(self._serving)
        if lm is None:
            if failed:
                raise UnavailableError(f"model {model!r} failed to load: {failed}")
            raise NotFoundError(
                f"unknown model {model!r}; available models: "
                f"{', '.join(available) if available else 'none'} "
                "(choose one with request metadata x-a2f-model)")
        return lm

    def acquire(self, name: str | None, identity: str | None = None) -> LoadedModel:
        """Reserve a stream slot on the model's serving version (release it when done)."""
        lm = self.get(name)
        if identity and identity.lower() not in {i.lower() for i in lm.identities}:
            raise NotFoundError(
                f"unknown identity {identity!r} for model {lm.name!r}; available identities: "
                f"{', '.join(lm.identities) or 'none'} (request metadata x-a2f-identity)")
        with self._lock:
            if not self._accepting:
                raise UnavailableError("the server is shutting down; retry on another replica")
            if self._open >= self.config.max_streams:
                raise ResourceExhaustedError(
                    f"server at capacity: {self._open} of {self.config.max_streams} streams "
                    "open (max_streams); retry later or on another replica")
            lm = self._serving.get(lm.name, lm)
            lm.open_streams += 1
            self._open += 1
        return lm

    def release(self, lm: LoadedModel) -> None:
        with self._lock:
            lm.open_streams -= 1
            self._open -= 1
            done = lm.retired and lm.open_streams == 0
            if done:
                drain = self._draining.get(lm.name, [])
                if lm in drain:
                    drain.remove(lm)
                if not drain:
                    self._draining.pop(lm.name, None)
        if done:
            self._release_model(lm)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._open

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    # -- admin ---------------------------------------------------------------------------
    def states(self) -> list[ModelState]:
        with self._lock:
            names = sorted(set(self._serving) | set(self._failed) | set(self._draining))
            out = []
            for n in names:
                s = self._serving.get(n)
                d = list(self._draining.get(n, []))
                if s is not None:
                    state = "serving"
                elif n in self._failed:
                    state = "failed"
                else:
                    state = "draining"
                out.append(ModelState(n, state, s, d, self._failed.get(n, "")))
            return out

    def close(self) -> None:
        """Release every loaded version (after the streams have ended)."""
        with self._lock:
            models = list(self._serving.values())
            for d in self._draining.values():
                models.extend(d)
            self._serving.clear()
            self._draining.clear()
        for lm in models:
            self._release_model(lm)
