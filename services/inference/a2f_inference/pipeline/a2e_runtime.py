"""One loaded Audio2Emotion (A2E) version: its folder, its engine and the streams using it.

An :class:`EmotionRuntime` is to A2E what :class:`~a2f_inference.pipeline.runtime.ModelRuntime`
is to a face model. Every face stream opened with ``emotion_model=`` gets an
:class:`A2EStream` here (:meth:`EmotionRuntime.open_stream`): the stream's
:class:`~a2f_inference.pipeline.a2e_track.A2EStreamTrack` plus the callback that tells the
face stream its emotions moved on. An :class:`~a2f_inference.pipeline.a2e_scheduler.A2EScheduler`
attaches itself and runs the windows of all streams in shared batches; the runtime passes
the streams' wake-ups to it (``notify``), as the face runtime does for sessions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import numpy as np

from a2f_engine.base import Engine
from a2f_inference.pipeline.a2e_postprocess import A2EPostParams
from a2f_inference.pipeline.a2e_track import A2EStreamTrack, PreferredFn
from a2f_inference.pipeline.a2e_window import DEFAULT_INFERENCE_INTERVAL, A2EClock
from a2f_volume.emotion_folder import INPUT_NAME, OUTPUT_NAME, EmotionModelFolder
from a2f_volume.errors import A2FError, InvalidArgumentError

logger = logging.getLogger(__name__)

#: Called on the A2E worker thread when a stream's emotions moved on, or it failed.
A2EReadyCallback = Callable[["A2EStream"], None]


class A2EStreamError(A2FError):
    """Audio2Emotion inference failed for a stream."""

    status = "INTERNAL"


class A2EStreamScheduler(Protocol):
    """What an emotion runtime needs of its scheduler (an ``A2EScheduler``)."""

    def submit(self, stream: A2EStream) -> None:
        """``stream`` may have ready windows (any thread)."""
        ...


class A2EStream:
    """One face stream's A2E side on one :class:`EmotionRuntime` (thread-safe)."""

    def __init__(self, runtime: EmotionRuntime, track: A2EStreamTrack,
                 on_ready: A2EReadyCallback | None) -> None:
        self.runtime = runtime
        self.track = track
        self.on_ready = on_ready
        self.error: BaseException | None = None
        self.closed = False
        self.ready_at: float | None = None  # when windows became ready (queue wait)

    def push_audio(self, samples: np.ndarray) -> None:
        """Audio at the A2E rate (float, -1..1); wakes the scheduler when a window is ready."""
        if self.closed:
            return
        self.track.push_audio(samples)
        self._wake()

    def end(self) -> None:
        """No more audio: the remaining windows are zero-padded and ready."""
        if self.closed:
            return
        self.track.end()
        self._wake()

    def _wake(self) -> None:
        if self.track.windows_ready() > 0:
            if self.ready_at is None:
                self.ready_at = time.perf_counter()
            self.runtime.notify(self)

    def close(self) -> None:
        """Leave the runtime (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.runtime.forget(self)

    # -- the scheduler's side ----------------------------------------------------------------
    def take_windows(self, max_count: int) -> tuple[list[int], np.ndarray]:
        """Scheduler thread: up to ``max_count`` ready windows (none once closed or failed)."""
        if self.closed or self.error is not None:
            return [], np.zeros((0, self.track.clock.window_samples), dtype=np.float32)
        frames, windows = self.track.take_windows(max_count)
        if self.track.windows_ready() == 0:
            self.ready_at = None
        return frames, windows

    def accept_logits(self, frames: list[int], logits: np.ndarray) -> None:
        """Scheduler thread: the logits of windows taken with :meth:`take_windows` (kept;
        the scheduler post-processes the streams of a batch together, ``advance_tracks``)."""
        if not self.closed:
            self.track.store_logits(frames, logits)

    def fail(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err if isinstance(err, A2FError) else A2EStreamError(
                f"Audio2Emotion inference failed on {self.runtime.name!r}: "
                f"{type(err).__name__}: {err}")
            if self.error is not err:
                self.error.__cause__ = err

    def signal_ready(self) -> None:
        """Scheduler thread: emotions moved on (or the stream failed); calls ``on_ready``."""
        cb = self.on_ready
        if cb is None or self.closed:
            return
        try:
            cb(self)
        except Exception:  # a listener must not stop the worker
            logger.exception("A2E on_ready callback of a stream on %s failed", self.runtime.name)


class EmotionRuntime:
    """An A2E version ready to serve streams.

    ``max_batch`` defaults to the folder's ``trt_info`` ``MAX_BATCH_SIZE`` (NIM: 128), capped
    by the engine's own limit; ``inference_interval``: frames between two A2E runs; ``name``
    (for messages) defaults to the folder's.
    """

    def __init__(self, folder: EmotionModelFolder, engine: Engine, *,
                 max_batch: int | None = None,
                 inference_interval: int = DEFAULT_INFERENCE_INTERVAL,
                 name: str | None = None) -> None:
        if inference_interval < 1:
            raise InvalidArgumentError(
                f"A2E inference_interval {inference_interval}: expected an integer >= 1")
        self.folder = folder
        self.engine = engine
        self.name = name or folder.name  # the model's name (a version dir's is its id)
        self.kind = folder.kind
        self.inference_interval = int(inference_interval)
        limit = max_batch if max_batch is not None else folder.max_batch
        self.max_batch = max(1, min(int(limit),
                                    int(getattr(engine, "max_batch", limit) or limit)))
        self.input_name = INPUT_NAME
        self.output_name = OUTPUT_NAME
        self._lock = threading.Lock()
        self._streams: set[A2EStream] = set()
        self.scheduler: A2EStreamScheduler | None = None

    @property
    def lookahead_s(self) -> float:
        """Audio needed past a frame before its A2E window is complete (T/2)."""
        return (self.folder.window_samples - self.folder.window_samples // 2) / float(
            self.folder.samplerate)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def streams(self) -> list[A2EStream]:
        with self._lock:
            return list(self._streams)

    def clock(self, fps: float | Fraction) -> A2EClock:
        return A2EClock.create(self.folder.samplerate, self.folder.window_samples, fps,
                               self.inference_interval)

    def open_stream(self, params: A2EPostParams, *, fps: float | Fraction,
                    input_strength: float = 1.0, preferred: PreferredFn | None = None,
                    on_ready: A2EReadyCallback | None = None) -> A2EStream:
        """The A2E side of one stream at ``fps`` output frames per second."""
        track = A2EStreamTrack(self.clock(fps), params, input_strength=input_strength,
                               preferred=preferred)
        stream = A2EStream(self, track, on_ready)
        with self._lock:
            self._streams.add(stream)
        return stream

    # -- the scheduler's side ----------------------------------------------------------------
    def attach(self, scheduler: A2EStreamScheduler) -> None:
        self.scheduler = scheduler

    def detach(self, scheduler: A2EStreamScheduler) -> None:
        if self.scheduler is scheduler:
            self.scheduler = None

    def notify(self, stream: A2EStream) -> None:
        sched = self.scheduler
        if sched is not None:
            sched.submit(stream)

    def forget(self, stream: A2EStream) -> None:
        with self._lock:
            self._streams.discard(stream)
