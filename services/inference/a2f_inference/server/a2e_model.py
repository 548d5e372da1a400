"""One loaded Audio2Emotion (A2E) version, and the loader that makes one from its folder.

Loading is the same path as a face model's (:class:`~a2f_inference.server.engines.EngineChecker`:
one engine choice, one hash cache), then the pipeline's
:class:`~a2f_inference.pipeline.a2e_runtime.EmotionRuntime` and its
:class:`~a2f_inference.pipeline.a2e_scheduler.A2EScheduler`, started. Warm-up runs one batch
of deterministic windows through the scheduler's engine and checks the logits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from a2f_inference.pipeline.a2e_runtime import EmotionRuntime
from a2f_inference.pipeline.a2e_scheduler import A2EScheduler
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.engines import EngineChecker, model_max_batch
from a2f_inference.server.metrics import A2EBatchMetrics, InferenceMetrics
from a2f_inference.server.model import LoadedVersion
from a2f_inference.server.warmup import WarmUpError, warmup_pcm
from a2f_volume.emotion_folder import load_emotion_folder
from a2f_volume.versions import current_version

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LoadedEmotion(LoadedVersion):
    """One loaded version of an A2E folder (the admin service lists it with kind
    ``emotion``)."""

    label: ClassVar[str] = "A2E model"

    runtime: EmotionRuntime
    scheduler: A2EScheduler
    kind: str = "emotion"
    identities: tuple[str, ...] = ()

    def warm_up(self) -> int:
        """One batch of windows of a deterministic voice through the engine; the number of
        windows. Raises :class:`WarmUpError` unless the logits are finite and shaped
        [windows, classes]."""
        rt = self.runtime
        audio = np.frombuffer(warmup_pcm(), dtype="<i2").astype(np.float32) / 32768
        clock = rt.clock(30.0)
        frames = clock.inference_frames(0, clock.frames_ready(audio.size, ended=True))
        frames = frames[:max(1, min(len(frames), self.max_batch))]
        t0 = time.perf_counter()
        out = self.engine.run({rt.input_name: clock.windows(audio, frames)})
        logits = np.asarray(out[rt.output_name])
        expected = (len(frames), len(rt.folder.classes))
        if logits.shape != expected:
            raise WarmUpError(f"A2E warm-up: logits of shape {logits.shape}, expected "
                              f"{expected}")
        if not np.all(np.isfinite(logits)):
            raise WarmUpError("A2E warm-up: non-finite logits")
        log.info("A2E model %s warmed up in %.2fs (%d windows)", self.name,
                 time.perf_counter() - t0, len(frames))
        return len(frames)


def load_emotion_model(folder: Path, config: ServerConfig,
                       metrics: InferenceMetrics | None = None, name: str | None = None,
                       engines: EngineChecker | None = None) -> LoadedEmotion:
    """Load an A2E folder: its engine (FP32, as built), runtime and scheduler (started; not
    warmed up). ``name``/``engines`` as for :func:`~a2f_inference.server.model.load_model`."""
    t0 = time.perf_counter()
    name = name or folder.name
    version = current_version(folder)
    ef = load_emotion_folder(folder)
    max_batch = model_max_batch(folder, 0)  # the A2E profile (128), not the face cap
    choice = (engines or EngineChecker()).load(folder, config, max_batch)
    try:
        runtime = EmotionRuntime(ef, choice.engine, max_batch=max_batch,
                                 inference_interval=config.a2e_inference_interval, name=name)
        scheduler = A2EScheduler(
            runtime, max_wait_s=config.max_wait_s,
            observer=A2EBatchMetrics(metrics, name) if metrics is not None else None)
        le = LoadedEmotion(name=name, folder=folder, version=version, backend=choice.backend,
                           fingerprint=choice.fingerprint, runtime=runtime,
                           scheduler=scheduler, engine=choice.engine,
                           max_batch=runtime.max_batch, lookahead_s=runtime.lookahead_s)
        scheduler.start()
    except BaseException:
        choice.engine.close()
        raise
    log.info("A2E model %s version %s loaded: %s engine %s, max batch %d, window %d samples, "
             "inference every %d frames (%.1fs)", name, version, choice.backend,
             choice.fingerprint[:19], le.max_batch, ef.window_samples,
             runtime.inference_interval, time.perf_counter() - t0)
    return le
