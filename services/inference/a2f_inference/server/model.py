"""One loaded model version, and the loader that makes one from a model folder.

Loading is: the version id, the engine (:class:`~a2f_inference.server.engines.EngineChecker`:
one selection order, one hash cache), the pipeline runtime and its batch scheduler,
started. It does not warm the version up: whoever puts it in service does that once
(:func:`~a2f_inference.server.warmup.warm_up_model`), the registry at start-up, the hot
reloader for a new version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from a2f_engine.base import Engine
from a2f_inference.pipeline import BatchScheduler, ModelRuntime
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.engines import EngineChecker, model_max_batch
from a2f_inference.server.metrics import BatchMetrics, InferenceMetrics
from a2f_inference.server.modes import as_engine_policy, as_postprocess_mode
from a2f_inference.server.warmup import warm_up_model
from a2f_volume.model_folder import load_model_folder
from a2f_volume.versions import current_version

log = logging.getLogger(__name__)


class StoppableScheduler(Protocol):
    """What releasing a version needs of its scheduler (face or A2E)."""

    def stop(self) -> None: ...


@dataclass(kw_only=True)
class LoadedVersion:
    """What every loaded version holds (face model or Audio2Emotion), and its release."""

    label: ClassVar[str] = "model"  # for the log

    name: str
    folder: Path
    version: str
    backend: str
    fingerprint: str
    scheduler: StoppableScheduler
    engine: Engine
    max_batch: int
    lookahead_s: float = 0.0
    loaded_at: float = field(default_factory=time.time)
    open_streams: int = 0
    retired: bool = False
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Stop the scheduler, then free the engine (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        log.info("%s %s version %s: released", self.label, self.name, self.version)
        try:
            self.scheduler.stop()
        finally:
            self.engine.close()


@dataclass(kw_only=True)
class LoadedModel(LoadedVersion):
    """One loaded version of one model folder."""

    kind: str
    identities: tuple[str, ...]
    runtime: ModelRuntime
    scheduler: BatchScheduler

    def warm_up(self) -> int:
        """:func:`~a2f_inference.server.warmup.warm_up_model` on this version."""
        return warm_up_model(self)


def load_model(folder: Path, config: ServerConfig, metrics: InferenceMetrics | None = None,
               name: str | None = None, engines: EngineChecker | None = None) -> LoadedModel:
    """Load a model folder: its engine, runtime and scheduler (started; not warmed up).

    ``name`` is the model's name when ``folder`` is a pinned version directory (whose own
    name is the version id); default the folder's name. ``engines``: the server's engine
    checker (its hash cache is shared with the hot reloader); a new one by default.
    """
    t0 = time.perf_counter()
    name = name or folder.name
    version = current_version(folder)
    max_batch = model_max_batch(folder, config.max_batch)
    model = load_model_folder(folder)
    choice = (engines or EngineChecker.for_policy(as_engine_policy(config.engine_policy))
              ).load(folder, config, max_batch, model=model, name=name)
    try:
        runtime = ModelRuntime(model, choice.engine, max_batch=max_batch,
                               serving=choice.serving, noise_seed=config.diffusion_noise_seed)
        scheduler = BatchScheduler(
            runtime, max_batch=runtime.max_batch, max_wait_s=config.max_wait_s,
            observer=BatchMetrics(metrics, name) if metrics is not None else None,
            pipelined=as_postprocess_mode(config.postprocess) == "overlap",
            workers=choice.workers)
        lm = LoadedModel(name=name, folder=folder, version=version, kind=runtime.kind,
                         identities=runtime.identities, backend=choice.backend,
                         fingerprint=choice.fingerprint, runtime=runtime, scheduler=scheduler,
                         engine=choice.engine, max_batch=runtime.max_batch,
                         lookahead_s=float(runtime.lookahead_s))
        scheduler.start()
    except BaseException:
        choice.engine.close()
        raise
    log.info("model %s version %s loaded: %s, %s engine %s, max batch %d, %d inference "
             "worker(s), identities %s (%.1fs)", name, version, lm.kind, choice.backend,
             choice.fingerprint[:19], lm.max_batch, choice.workers, list(lm.identities) or "-",
             time.perf_counter() - t0)
    return lm
