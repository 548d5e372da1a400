"""The models a server holds: per name, the version that takes new streams.

A :class:`~a2f_inference.server.model.LoadedModel` is one version of one model folder,
loaded: its engine, the pipeline runtime and the batch scheduler. Streams hold a reference
to the LoadedModel they started on (:meth:`ModelRegistry.acquire` /
:meth:`ModelRegistry.release`), so a hot reload can put a new version in place for NEW
streams (:meth:`ModelRegistry.install`) while open streams finish on theirs; a replaced
version is closed when its last stream ends. At most two versions of a model are resident:
the serving one and one draining.

An Audio2Emotion folder goes to the A2E slot (:mod:`~a2f_inference.server.a2e_slot`), not to
the face models: :meth:`ModelRegistry.acquire_a2e` gives a new stream the A2E version to use.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from a2f_inference.server.a2e_model import LoadedEmotion, load_emotion_model
from a2f_inference.server.a2e_slot import A2ESlot
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.engines import EngineChecker
from a2f_inference.server.memory import trim_memory
from a2f_inference.server.metrics import InferenceMetrics
from a2f_inference.server.model import LoadedModel, load_model
from a2f_inference.server.modes import as_engine_policy
from a2f_volume import layout
from a2f_volume.errors import (
    A2FError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from a2f_volume.model_kind import model_family

log = logging.getLogger(__name__)


class ModelLoader(Protocol):
    """Loads one model folder (:func:`~a2f_inference.server.model.load_model`)."""

    def __call__(self, folder: Path, config: ServerConfig,
                 metrics: InferenceMetrics | None = None, name: str | None = None,
                 engines: EngineChecker | None = None) -> LoadedModel: ...


#: A loaded version of either family.
Served = LoadedModel | LoadedEmotion


@dataclass
class ModelState:
    """What the admin service reports about one model name."""

    name: str
    state: str
    serving: Served | None
    draining: list[Served]
    error: str = ""


class ModelRegistry:
    """Thread-safe map from model name to the LoadedModel taking new streams."""

    def __init__(self, config: ServerConfig, metrics: InferenceMetrics,
                 loader: ModelLoader = load_model, engines: EngineChecker | None = None
                 ) -> None:
        self.config = config
        self.metrics = metrics
        #: The engine checker of every load, shared with the hot reloader (one hash cache).
        self.engines = (engines if engines is not None else
                        EngineChecker.for_policy(as_engine_policy(config.engine_policy)))
        self._loader = loader
        self._lock = threading.Lock()
        self._serving: dict[str, LoadedModel] = {}
        self._draining: dict[str, list[LoadedModel]] = {}
        self._failed: dict[str, str] = {}
        self._open = 0
        self._accepting = True
        self.a2e = A2ESlot(config.models_root, config.a2e_model)

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

    def load(self, folder: Path) -> Served | None:
        """Load ``folder``, warm it up and install it for new streams; None (and logged) on
        failure."""
        try:
            lm = self.load_version(folder.name, folder)
            try:
                lm.warm_up()
            except BaseException:
                lm.close()
                raise
        except Exception as err:
            msg = err.message if isinstance(err, A2FError) else f"{type(err).__name__}: {err}"
            log.error("model %s: failed to load: %s", folder.name, msg,
                      exc_info=not isinstance(err, A2FError))
            self.record_failure(folder.name, msg)
            return None
        self.install(lm)
        return lm

    def install(self, lm: Served) -> None:
        """Make ``lm`` take new streams of its name; the previous version drains."""
        if isinstance(lm, LoadedEmotion):
            idle = self.a2e.install(lm)
            self.metrics.init_a2e(lm.name)
            self.metrics.model_info.labels(lm.name, lm.version, lm.kind, lm.backend,
                                           lm.fingerprint).set(1)
            log.info("Audio2Emotion model %s version %s drives the emotion of new streams",
                     lm.name, lm.version)
            if idle is not None:
                self._release_model(idle)
            return
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

    def _release_model(self, lm: Served) -> None:
        with contextlib.suppress(KeyError):
            self.metrics.model_info.remove(lm.name, lm.version, lm.kind, lm.backend,
                                           lm.fingerprint)
        lm.close()
        trim_memory()

    # -- hot reload (server.reload.ModelReloader drives these) ----------------------------
    def load_version(self, name: str, version_dir: Path) -> Served:
        """Load one version of model ``name`` from its pinned directory (raises on failure;
        the hot reloader warms it up). An A2E folder loads only when it is the server's A2E
        model (``A2ENotSelectedError`` otherwise)."""
        if model_family(version_dir) == "emotion":
            self.a2e.check_selected(name)
            return load_emotion_model(version_dir, self.config, self.metrics, name=name,
                                      engines=self.engines)
        return self._loader(version_dir, self.config, self.metrics, name=name,
                            engines=self.engines)

    def serving_key(self, name: str) -> tuple[str, str] | None:
        """(version, engine fingerprint) of the version taking new streams of ``name``."""
        key = self.a2e.serving_key(name)
        if key is not None:
            return key
        with self._lock:
            lm = self._serving.get(name)
            return None if lm is None else (lm.version, lm.fingerprint)

    def resident_versions(self, name: str) -> int:
        """Versions of ``name`` in memory: the serving one and those still draining."""
        with self._lock:
            return (int(name in self._serving) + len(self._draining.get(name, []))
                    + self.a2e.resident_versions(name))

    def retire(self, name: str) -> bool:
        """``name`` takes no new streams; its open streams finish, then it is released."""
        served, idle = self.a2e.retire(name)
        if idle is not None:
            self._release_model(idle)
        if served:
            return True
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
        if self.a2e.holds(name) or model_family(self.config.models_root / name) == "emotion":
            self.a2e.record_failure(name, message)
            return
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

    def acquire_a2e(self) -> LoadedEmotion | None:
        """The A2E version a new stream uses (release it when done), or None."""
        return self.a2e.acquire()

    def release_a2e(self, le: LoadedEmotion) -> None:
        if self.a2e.release(le):
            self._release_model(le)

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
                out.append(ModelState(n, state, s, list(d), self._failed.get(n, "")))
        for n, state, serving, draining, error in self.a2e.snapshot():
            out.append(ModelState(n, state, serving, list(draining), error))
        return out

    def close(self) -> None:
        """Release every loaded version (after the streams have ended)."""
        with self._lock:
            models: list[Served] = list(self._serving.values())
            for d in self._draining.values():
                models.extend(d)
            self._serving.clear()
            self._draining.clear()
        models.extend(self.a2e.take_all())
        for lm in models:
            self._release_model(lm)
