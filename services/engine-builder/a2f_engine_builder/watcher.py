"""Daemon mode: react to volume changes, retry failures with exponential backoff per model."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from a2f_engine_builder.builder import EngineBuilder, Outcome
from a2f_volume.hashing import file_identity
from a2f_volume.layout import ModelPaths, list_model_dirs
from a2f_volume.watch import VolumeWatcher

logger = logging.getLogger(__name__)


@dataclass
class _Backoff:
    failures: int
    next_at: float
    onnx_identity: str


class BuildDaemon:
    """Runs :class:`EngineBuilder` for every model that appears or changes.

    Change detection is :class:`a2f_volume.watch.VolumeWatcher` (inotify through watchdog as
    a wake-up, a full rescan every ``poll_interval_s`` as the fallback for network
    filesystems; temporary names ignored; debounced). It watches the root and, through it,
    the version directories under ``.a2f/versions`` that model folders point to, so symlink
    swaps are seen. A model whose build failed is retried after ``backoff_initial_s``,
    doubling up to ``backoff_max_s``, or at once when its ONNX changes. Temporary files of
    dead builders are swept at start and every ``sweep_interval_s``; after each pass that
    built something, cached engines no version uses are collected
    (:meth:`EngineBuilder.collect_engine_cache`).
    """

    def __init__(self, builder: EngineBuilder, *, poll_interval_s: float = 30.0,
                 debounce_s: float = 2.0, inotify: bool = True, backoff_initial_s: float = 10.0,
                 backoff_max_s: float = 600.0, force_first: bool = False,
                 sweep_interval_s: float = 600.0) -> None:
        self.builder = builder
        self.sweep_interval_s = sweep_interval_s
        self._next_sweep = 0.0
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._force_pending = force_first
        self._forced: set[str] = set()
        self._pending: set[str] = set()
        self._backoff: dict[str, _Backoff] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watcher = VolumeWatcher(builder.models_root, self._on_change,
                                     poll_interval_s=poll_interval_s, debounce_s=debounce_s,
                                     use_inotify=inotify)
        self.passes = 0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="engine-builder", daemon=True)
        self._thread.start()
        self.watcher.start()  # reports every model present as changed
        mode = "inotify + rescan" if self.watcher.inotify_active else "polling rescan"
        logger.info("watching %s (%s)", self.builder.models_root, mode)

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop watching; let a build in progress finish for up to ``grace_s``."""
        self.watcher.stop()
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=grace_s)
            self._thread = None

    def wait(self) -> None:
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=1.0)

    # -- internals ---------------------------------------------------------------------
    def _on_change(self, models: set[str]) -> None:
        with self._cond:
            self._pending |= models
            self._cond.notify_all()

    def _due(self, now: float) -> set[str]:
        return {m for m, b in self._backoff.items() if b.next_at <= now}

    def _timeout(self, now: float) -> float:
        wake = [self._next_sweep] + [b.next_at for b in self._backoff.values()]
        return max(0.05, min(wake) - now)

    def _sweep_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval_s
        removed = self.builder.sweep_temps(list_model_dirs(self.builder.models_root))
        if removed:
            logger.info("swept %d temporary file(s) of dead builders", removed)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sweep_if_due()
            with self._cond:
                now = time.monotonic()
                if not self._pending and not self._due(now):
                    self._cond.wait(self._timeout(now))
                if self._stop.is_set():
                    return
                todo = self._pending | self._due(time.monotonic())
                self._pending = set()
            for name in sorted(todo):
                if self._stop.is_set():
                    return
                self._process(name)
            if todo:
                self.builder.collect_engine_cache()
                self.builder.hash_cache.save()
                with self._cond:
                    self.passes += 1
                    self._cond.notify_all()

    def _process(self, name: str) -> None:
        folder = self.builder.models_root / name
        if not (folder / "model.json").exists():
            self._backoff.pop(name, None)
            return
        state = self._backoff.get(name)
        if state is not None and state.next_at > time.monotonic():
            try:
                ident = file_identity(ModelPaths(folder.resolve()).onnx)
            except OSError:
                ident = ""
            if ident == state.onnx_identity:
                return  # same bytes still failing: wait for the backoff
            logger.info("%s: ONNX changed; retrying before the backoff ends", name)
        force = self._force_pending and name not in self._forced
        if force:
            logger.info("%s: FORCE_TRT_REBUILD is set: rebuilding once", name)
            self._forced.add(name)
        outcome = self.builder.ensure(folder, force=force)
        self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        name = outcome.model
        metrics = self.builder.metrics
        if outcome.ok:
            if name in self._backoff:
                logger.info("%s: recovered after %d failure(s)", name,
                            self._backoff[name].failures)
            self._backoff.pop(name, None)
            metrics.consecutive_failures.labels(name).set(0)
            return
        prev = self._backoff.get(name)
        failures = (prev.failures if prev else 0) + 1
        delay = min(self.backoff_initial_s * 2 ** (failures - 1), self.backoff_max_s)
        self._backoff[name] = _Backoff(failures, time.monotonic() + delay,
                                       outcome.onnx_identity)
        metrics.consecutive_failures.labels(name).set(failures)
        logger.warning("%s: build failed %d time(s) in a row; next attempt in %.1fs",
                       name, failures, delay)
