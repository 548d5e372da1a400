"""Warm-up of a freshly loaded version: a deterministic stream through its own scheduler.

Every load is warmed up exactly once before the version takes traffic: the first stream
otherwise pays for per-identity caches and the engine's first runs (seconds on full-size
models), and every stream open at that moment waits with it. The warm-up doubles as a
check: a version whose output is not sane is not installed.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import numpy as np

from a2f_inference.pipeline import ModelRuntime
from a2f_volume.errors import A2FError

log = logging.getLogger(__name__)

_WARMUP_RATE_HZ = 16000
_WARMUP_SECONDS = 1.0
_WARMUP_TIMEOUT_S = 300.0


class HasRuntime(Protocol):
    """A loaded version (the registry's ``LoadedModel``)."""

    @property
    def runtime(self) -> ModelRuntime: ...


def warmup_pcm(seconds: float = _WARMUP_SECONDS) -> bytes:
    """The warm-up stream's audio: a deterministic voiced-like tone with a little noise,
    16-bit PCM at 16 kHz."""
    n = int(_WARMUP_RATE_HZ * seconds)
    t = np.arange(n, dtype=np.float64) / _WARMUP_RATE_HZ
    rng = np.random.default_rng(1234)
    signal = 0.3 * np.sin(2 * np.pi * 180.0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t))
    signal += 0.02 * rng.standard_normal(n)
    return (np.clip(signal, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def warm_up_model(lm: HasRuntime, seconds: float = _WARMUP_SECONDS,
                  timeout_s: float = _WARMUP_TIMEOUT_S) -> int:
    """Run one deterministic stream per identity through a loaded version; the number of
    frames made.

    The streams go through the version's own scheduler and engine, exactly as a client's
    would. Raises :class:`WarmUpError` unless frames come back for every identity and every
    frame has one finite weight per blendshape name. ``timeout_s`` bounds each stream.
    """
    runtime = lm.runtime
    pcm = warmup_pcm(seconds)
    t0 = time.perf_counter()
    frames = sum(_warm_up_stream(runtime, identity, pcm, timeout_s)
                 for identity in runtime.identities or (None,))
    log.info("model %s warmed up in %.1fs (%d frames)", runtime.name,
             time.perf_counter() - t0, frames)
    return frames


def _warm_up_stream(runtime: ModelRuntime, identity: str | None, pcm: bytes,
                    timeout_s: float) -> int:
    expected = len(runtime.blendshape_names)
    session = runtime.open_stream(identity, None, input_rate=_WARMUP_RATE_HZ,
                                  constant_noise=True, seed=0)
    frames = 0
    try:
        session.push_audio(pcm)
        session.end_of_audio()
        deadline = time.monotonic() + timeout_s
        while not session.done:
            if session.error is not None:
                raise WarmUpError(f"warm-up stream failed: {session.error}") from session.error
            if time.monotonic() > deadline:
                raise WarmUpError(f"warm-up stream made {frames} frame(s) in {timeout_s:.0f} s "
                                  "and did not finish")
            session.wait(0.5)
            for frame in session.take_frames():
                w = np.asarray(frame.weights)
                if w.shape != (expected,):
                    raise WarmUpError(f"warm-up frame {frame.index} has weights of shape "
                                      f"{w.shape}, expected ({expected},)")
                if not np.all(np.isfinite(w)):
                    raise WarmUpError(f"warm-up frame {frame.index} has non-finite weights")
                frames += 1
        if session.error is not None:
            raise WarmUpError(f"warm-up stream failed: {session.error}") from session.error
    finally:
        session.close()
    if frames == 0:
        raise WarmUpError(f"warm-up stream (identity {identity or 'default'}) made no frame")
    return frames


class WarmUpError(A2FError):
    """A freshly loaded version did not produce sane output on the warm-up stream."""

    status = "FAILED_PRECONDITION"
