"""Hot reload: new model versions and engines go live while the server keeps serving.

:class:`ModelReloader` keeps what the server serves in step with the model volume. A
:class:`~a2f_volume.watch.VolumeWatcher` (inotify wake-ups plus a periodic rescan) reports
which model folders changed; one background thread then *reconciles* each of them:

1. The folder is gone: the model stops taking new streams; open streams finish on their
   version, which is released when the last one ends.
2. The folder is there: its version directory is pinned (a versions lease, so model-sync's
   garbage collection cannot remove it mid-load) and everything below reads through the
   pinned real directory, so all files come from one version.
3. The engine is checked with the volume's rule (:func:`a2f_volume.engine_record.check_engine`)
   against this process's *own* target fingerprint. A version without a valid engine is not
   served while another version of the model is (the current one keeps serving); when the
   model has nothing served yet and the engine policy allows it, it is served from
   ``network.onnx`` with ONNX Runtime, and replaced once its engine is published.
4. If (version, engine) differs from what is served, the version is loaded, warmed up with a
   deterministic stream whose frames must be finite and of the right shape, and installed
   for **new** streams. Streams already open stay on the version they started on (the
   diffusion GRU state must not jump engines).

A load that fails leaves the current version serving; it is logged with the reason, counted,
and not retried until the folder's files change again (a new version, a new engine, any
replaced file). Loads run one at a time, and a model never has more than ``max_resident``
versions in memory: while an old version still drains, the next load of that model waits.

The class knows nothing of gRPC; it drives a :class:`ReloadTarget` (the server's model
registry) through a few methods, so it is tested with plain objects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from a2f_inference.server.engines import EngineChecker, EngineStatus
from a2f_volume import layout
from a2f_volume.errors import A2FError
from a2f_volume.versions import current_version, pin
from a2f_volume.watch import Signature, VolumeWatcher, folder_signature

log = logging.getLogger(__name__)

#: Results counted by ``a2f_inference_model_loads_total{result=...}``.
LOAD_RESULTS = ("loaded", "failed")
#: Prefix of the per-model gRPC health service names (``a2f.model.<name>``).
HEALTH_PREFIX = "a2f.model."


def health_service_name(model: str) -> str:
    """The ``grpc.health.v1`` service name that reports whether ``model`` is served."""
    return HEALTH_PREFIX + model


class Loaded(Protocol):
    """What the reloader needs of a loaded version (the registry's ``LoadedModel`` or
    ``LoadedEmotion``)."""

    name: str
    version: str
    fingerprint: str

    def warm_up(self) -> int:
        """Run the version once and check its output (raises when it is not sane)."""
        ...

    def close(self) -> None: ...


M = TypeVar("M", bound=Loaded)
M_contra = TypeVar("M_contra", bound=Loaded, contravariant=True)


class ReloadTarget(Protocol[M_contra]):
    """The registry side of hot reload."""

    def serving_key(self, name: str) -> tuple[str, str] | None:
        """(version, engine fingerprint) taking new streams of ``name``; None if none."""
        ...

    def resident_versions(self, name: str) -> int:
        """How many versions of ``name`` are in memory (serving plus draining)."""
        ...

    def install(self, lm: M_contra) -> None:
        """Route new streams of ``lm.name`` to ``lm``; the previous version drains."""
        ...

    def retire(self, name: str) -> bool:
        """Stop taking new streams of ``name``; open ones finish. False if not served."""
        ...

    def record_failure(self, name: str, message: str) -> None:
        """A version of ``name`` failed to load (for error messages to clients)."""
        ...


class ReloadMetrics(Protocol):
    """The metrics the reloader updates (``InferenceMetrics`` has them)."""

    model_loads: Any  # Counter, labels (model, result)
    model_load_seconds: Any  # Histogram, labels (model)


@dataclass(frozen=True)
class ReloadStatus:
    """What the reloader is doing about one model (for the admin service and metrics)."""

    name: str
    loading_version: str = ""
    waiting_version: str = ""  # present on the volume, not served yet (no engine, draining)
    waiting_reason: str = ""
    failed_version: str = ""  # the last version that failed to load, until one loads
    error: str = ""
    loads: int = 0
    failures: int = 0
    last_load_s: float = 0.0


@dataclass
class _ModelTrack:
    """The reloader's memory of one model name."""

    status: ReloadStatus
    failed_signature: Signature | None = None
    waiting_logged: str = ""


class ModelReloader(Generic[M]):
    """Watches ``models_root`` and hot-reloads model versions into ``target``.

    ``load(name, version_dir)`` loads one version (raising on failure); ``warm_up(lm)`` checks
    it (raising on failure; default ``lm.warm_up()``); ``check_engine(version_dir)`` says
    whether a valid engine exists for this process (default :class:`EngineChecker`).
    ``require_built_engine`` False lets a model that has nothing served yet start from
    ``network.onnx``. ``on_change(name,
    serving)`` is called after a model starts or stops being served (health updates).

    ``start()`` scans once and loads every model in the background; :meth:`wait_idle` blocks
    until there is nothing left to do. ``stop()`` stops watching and waits for a load in
    progress to finish (a half-loaded version is closed, never installed).
    """

    def __init__(
        self,
        models_root: str | Path,
        target: ReloadTarget[M],
        load: Callable[[str, Path], M],
        *,
        warm_up: Callable[[M], object] | None = None,
        check_engine: Callable[[Path], EngineStatus] | None = None,
        require_built_engine: bool = False,
        poll_interval_s: float = 5.0,
        debounce_s: float = 0.5,
        use_inotify: bool = True,
        max_resident: int = 2,
        defer_retry_s: float = 0.25,
        metrics: ReloadMetrics | None = None,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        if max_resident < 2:
            raise ValueError(f"max_resident {max_resident}: a swap needs at least 2")
        self.models_root = Path(models_root)
        self._target = target
        self._load = load
        self._warm_up: Callable[[M], object] = warm_up or _own_warm_up
        self._check_engine = check_engine or EngineChecker()
        self._require_built = require_built_engine
        self._max_resident = max_resident
        self._defer_retry_s = defer_retry_s
        self._metrics = metrics
        self._on_change = on_change
        self._poll_interval_s = poll_interval_s
        self._watcher = VolumeWatcher(self.models_root, self._changed,
                                      poll_interval_s=poll_interval_s, debounce_s=debounce_s,
                                      use_inotify=use_inotify)
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._busy = False
        self._stopping = False
        self._tracks: dict[str, _ModelTrack] = {}
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker, then the watcher (whose first scan queues every model)."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="model-reloader", daemon=True)
        self._thread.start()
        self._watcher.start()
        log.info("watching %s for model changes (inotify %s, rescan every %.1fs)",
                 self.models_root, "on" if self._watcher.inotify_active else "off",
                 self._poll_interval_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop watching; wait up to ``timeout_s`` for a load in progress to end."""
        self._watcher.stop()
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("model reloader still busy after %.0fs; left behind", timeout_s)

    def poke(self, names: Iterable[str] = ()) -> None:
        """Reconcile ``names`` now, and rescan the volume soon (tests, admin actions)."""
        self._changed(set(names))
        self._watcher.poke()

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until no model is pending or loading; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    @property
    def inotify_active(self) -> bool:
        return self._watcher.inotify_active

    # -- state -------------------------------------------------------------------------
    def status(self) -> dict[str, ReloadStatus]:
        """A snapshot of what the reloader knows about each model it has seen."""
        with self._cond:
            return {n: t.status for n, t in self._tracks.items()}

    def _update(self, name: str, **changes: Any) -> None:
        with self._cond:
            track = self._tracks.setdefault(name, _ModelTrack(ReloadStatus(name)))
            track.status = replace(track.status, **changes)

    def _track(self, name: str) -> _ModelTrack:
        with self._cond:
            return self._tracks.setdefault(name, _ModelTrack(ReloadStatus(name)))

    # -- worker ------------------------------------------------------------------------
    def _changed(self, names: set[str]) -> None:
        if not names:
            return
        with self._cond:
            if self._stopping:
                return
            self._pending |= names
            self._cond.notify_all()

    def _run(self) -> None:
        deferred: set[str] = set()
        while True:
            with self._cond:
                if deferred and not self._pending:
                    self._cond.wait(self._defer_retry_s)
                while not self._pending and not deferred and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    self._busy = False
                    self._cond.notify_all()
                    return
                batch = sorted(self._pending | deferred)
                self._pending.clear()
                deferred = set()
                self._busy = True
            for name in batch:
                with self._cond:
                    if self._stopping:
                        break
                try:
                    if not self._reconcile(name):
                        deferred.add(name)
                except Exception:  # one model's bug must not stop reloading the others
                    log.exception("model %s: reload failed unexpectedly", name)
            with self._cond:
                self._busy = bool(deferred)
                self._cond.notify_all()

    def _reconcile(self, name: str) -> bool:
        """Bring one model in line with the volume; False to be retried shortly."""
        folder = self.models_root / name
        if not layout.is_model_name(name) or not (folder / layout.MODEL_JSON).is_file():
            self._removed(name)
            return True
        try:
            with pin(folder, timeout_s=10.0) as vdir:
                return self._reconcile_version(name, folder, vdir)
        except A2FError as err:  # gone between the check and the pin
            if not (folder / layout.MODEL_JSON).is_file():
                self._removed(name)
                return True
            raise RuntimeError(f"cannot pin {folder}: {err.message}") from err

    def _removed(self, name: str) -> None:
        with self._cond:
            known = self._tracks.pop(name, None)
        if self._target.retire(name):
            log.info("model %s: removed from the volume; no new streams, open ones finish",
                     name)
            if self._on_change is not None:
                self._on_change(name, False)
        elif known is not None:
            log.info("model %s: removed from the volume (it was not being served)", name)

    def _reconcile_version(self, name: str, folder: Path, vdir: Path) -> bool:
        track = self._track(name)
        signature = folder_signature(vdir)
        serving = self._target.serving_key(name)
        if track.failed_signature is not None and track.failed_signature == signature:
            log.debug("model %s: %s failed to load and its files did not change since; not "
                      "retried", name, vdir)
            return True
        try:
            version = current_version(vdir)
        except A2FError as err:  # e.g. an unreadable version record
            self._failed(name, vdir.name, signature, err, serving)
            return True
        engine = self._check_engine(vdir)
        if serving is not None:
            if engine.valid and serving == (version, engine.fingerprint):
                self._settled(name, track)
                return True
            if not engine.valid:
                if serving[0] != version:
                    self._wait(name, track, version, f"no valid engine yet ({engine.reason})",
                               f"version {version} has no valid engine for this machine yet; "
                               f"version {serving[0]} keeps serving: {engine.reason}")
                else:
                    self._settled(name, track)
                return True
        elif not engine.valid and self._require_built:
            self._wait(name, track, version, f"no valid engine yet ({engine.reason})",
                       f"version {version} is not served: no valid engine for this machine "
                       f"and the engine policy serves built engines only: {engine.reason}")
            return True
        resident = self._target.resident_versions(name)
        if resident >= self._max_resident:
            self._wait(name, track, version, "older versions still draining",
                       f"version {version} waits: {resident} version(s) in memory "
                       f"(at most {self._max_resident}); loading once streams on the "
                       "draining version end")
            return False
        self._load_version(name, vdir, version, signature, engine, serving)
        return True

    def _settled(self, name: str, track: _ModelTrack) -> None:
        if track.status.waiting_version:
            self._update(name, waiting_version="", waiting_reason="")
        track.waiting_logged = ""

    def _wait(self, name: str, track: _ModelTrack, version: str, reason: str,
              message: str) -> None:
        self._update(name, waiting_version=version, waiting_reason=reason)
        key = f"{version}:{reason}"
        if track.waiting_logged != key:  # once per version and reason, not every rescan
            track.waiting_logged = key
            log.info("model %s: %s", name, message)

    def _load_version(self, name: str, vdir: Path, version: str, signature: Signature | None,
                      engine: EngineStatus, serving: tuple[str, str] | None) -> None:
        what = (f"engine {engine.backend} {engine.fingerprint}" if engine.valid
                else f"{layout.ONNX_NAME} (no valid built engine: {engine.reason})")
        if serving is None:
            log.info("model %s: loading version %s with %s", name, version, what)
        else:
            log.info("model %s: loading version %s with %s in the background; version %s "
                     "keeps serving", name, version, what, serving[0])
        self._update(name, loading_version=version, waiting_version="", waiting_reason="")
        t0 = time.perf_counter()
        lm: M | None = None
        try:
            lm = self._load(name, vdir)
            frames = self._warm_up(lm)
            with self._cond:
                stopping = self._stopping
            if stopping:
                raise _Abandoned()
            self._target.install(lm)
        except _Abandoned:
            if lm is not None:
                lm.close()
            self._update(name, loading_version="")
            log.info("model %s: load of version %s abandoned: shutting down", name, version)
            return
        except Exception as err:
            if lm is not None:
                try:
                    lm.close()
                except Exception:
                    log.exception("model %s: closing the failed version %s", name, version)
            self._failed(name, version, signature, err, serving)
            return
        elapsed = time.perf_counter() - t0
        track = self._track(name)
        track.failed_signature = None
        track.waiting_logged = ""
        st = track.status
        self._update(name, loading_version="", failed_version="", error="",
                     loads=st.loads + 1, last_load_s=elapsed)
        if self._metrics is not None:
            self._metrics.model_loads.labels(name, "loaded").inc()
            self._metrics.model_load_seconds.labels(name).observe(elapsed)
        if serving is None:
            log.info("model %s: version %s is serving (loaded and warmed up in %.2fs, %s "
                     "warm-up frames)", name, lm.version, elapsed, frames)
        else:
            log.info("model %s: version %s is serving new streams (loaded and warmed up in "
                     "%.2fs); version %s drains its open streams", name, lm.version, elapsed,
                     serving[0])
        if self._on_change is not None:
            self._on_change(name, True)

    def _failed(self, name: str, version: str, signature: Signature | None, err: Exception,
                serving: tuple[str, str] | None) -> None:
        reason = err.message if isinstance(err, A2FError) else f"{type(err).__name__}: {err}"
        track = self._track(name)
        track.failed_signature = signature
        st = track.status
        self._update(name, loading_version="", failed_version=version, error=reason,
                     failures=st.failures + 1)
        if self._metrics is not None:
            self._metrics.model_loads.labels(name, "failed").inc()
        self._target.record_failure(name, f"version {version}: {reason}")
        keeps = (f"version {serving[0]} keeps serving" if serving is not None
                 else "the model is not served")
        log.error("model %s: failed to load version %s: %s; %s; retried when its files change",
                  name, version, reason, keeps, exc_info=not isinstance(err, A2FError))


def _own_warm_up(lm: Loaded) -> int:
    return lm.warm_up()


class _Abandoned(Exception):
    """Internal: a load finished after stop() began."""
