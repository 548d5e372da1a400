"""One stream's Audio2Emotion side: audio in, A2E windows out, logits in, per-frame emotions out.

:class:`A2EStreamTrack` knows nothing of engines or threads. Its owner (a stream session)
pushes the stream's audio at the A2E rate, asks for the windows that are ready
(:meth:`A2EStreamTrack.take_windows`), has them run in a batch with other streams' windows,
hands the logits back (:meth:`A2EStreamTrack.accept_logits`) and reads the emotions of the
frames that are complete (:meth:`A2EStreamTrack.take_emotions`): for each frame, the A2E
output and the smoothed emotion that is the face model's emotion input.

Frames post-process strictly in order: frame k needs the logits of the A2E run that starts
its interval (frame ``k - k % inference_interval``) and must exist in the audio received so
far. Only audio still needed by a future window is kept (bounded by the window length plus
what has not been asked for yet).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from a2f_inference.pipeline.a2e_postprocess import (
    A2EPostParams,
    A2EStep,
    A2EStreamState,
    step_streams,
)
from a2f_inference.pipeline.a2e_window import A2EClock

#: ``preferred(time_s)`` -> the client's keyframe emotion at that time, or None (no keyframes).
PreferredFn = Callable[[float], np.ndarray | None]


class FrameEmotions(NamedTuple):
    """Emotions of consecutive frames ``first .. first + len - 1``."""

    first: int
    a2e_output: np.ndarray  # float32 [n, 10]
    smoothed: np.ndarray  # float32 [n, 10]


class A2EStreamTrack:
    """The A2E state of one stream (thread-safe)."""

    def __init__(self, clock: A2EClock, params: A2EPostParams, *,
                 input_strength: float = 1.0, preferred: PreferredFn | None = None) -> None:
        self.clock = clock
        self.input_strength = input_strength
        self._preferred = preferred or (lambda _t: None)
        self._state = A2EStreamState(params)
        self._lock = threading.Lock()
        self._audio = np.zeros(0, dtype=np.float32)
        self._offset = 0  # stream sample index of self._audio[0]
        self._received = 0
        self._ended = False
        self._next_window = 0  # next A2E frame whose window has not been handed out
        self._logits: dict[int, np.ndarray] = {}  # A2E frame -> logits
        self._next_frame = 0  # next frame to post-process
        self._a2e: list[np.ndarray] = []
        self._smoothed: list[np.ndarray] = []
        self._taken = 0  # frames handed out by take_emotions

    # -- audio ---------------------------------------------------------------------------
    def push_audio(self, samples: np.ndarray) -> None:
        """Append audio at the A2E rate (float, -1..1)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            self._audio = np.concatenate([self._audio, x])
            self._received += x.size
            self._advance_locked()  # frames of an interval whose logits are known

    def end(self) -> None:
        """No more audio: the remaining windows are zero-padded and ready."""
        with self._lock:
            self._ended = True
            self._advance_locked()

    # -- A2E windows -------------------------------------------------------------------
    def windows_ready(self) -> int:
        """How many windows :meth:`take_windows` would hand out now (no limit)."""
        with self._lock:
            ready = self.clock.frames_ready(self._received, self._ended)
            return len(self.clock.inference_frames(self._next_window, ready))

    def take_windows(self, max_count: int) -> tuple[list[int], np.ndarray]:
        """Up to ``max_count`` A2E frames whose window is complete, and their windows
        (float32 [n, T]). Each window is handed out once."""
        with self._lock:
            ready = self.clock.frames_ready(self._received, self._ended)
            frames = self.clock.inference_frames(self._next_window, ready)[:max(max_count, 0)]
            if not frames:
                return [], np.zeros((0, self.clock.window_samples), dtype=np.float32)
            windows = self.clock.windows(self._audio, frames, self.input_strength,
                                         self._offset)
            self._next_window = frames[-1] + 1
            self._discard_locked()
            return frames, windows

    def _discard_locked(self) -> None:
        keep_from = self.clock.window_start(self._next_window)
        drop = min(max(keep_from - self._offset, 0), self._audio.size)
        if drop:
            self._audio = self._audio[drop:].copy()
            self._offset += drop

    def accept_logits(self, frames: list[int], logits: np.ndarray) -> None:
        """The network's logits [len(frames), C] for windows from :meth:`take_windows`;
        post-processes every frame that can now be completed."""
        self.store_logits(frames, logits)
        advance_tracks([self])

    def store_logits(self, frames: list[int], logits: np.ndarray) -> None:
        """Like :meth:`accept_logits` without post-processing: :func:`advance_tracks` does
        that for many tracks together."""
        rows = np.asarray(logits, dtype=np.float32).reshape(len(frames), -1)
        with self._lock:
            for k, row in zip(frames, rows, strict=True):
                self._logits[k] = row.copy()

    def _advance_locked(self) -> None:
        while (nxt := self._next_step_locked()) is not None:
            k, logits = nxt
            self._record_locked(k, step_streams([self._state], logits[None],
                                                [self._preferred(k / float(self.clock.fps))])[0])

    def _next_step_locked(self) -> tuple[int, np.ndarray] | None:
        """The next frame to post-process and its logits, if it can be done now."""
        k = self._next_frame
        if k >= self.clock.frames_ready(self._received, ended=True):  # not in the audio yet
            return None
        logits = self._logits.get(k - k % self.clock.inference_interval)
        return None if logits is None else (k, logits)

    def _record_locked(self, k: int, step: A2EStep) -> None:
        self._a2e.append(step.a2e_output)
        self._smoothed.append(step.smoothed)
        self._next_frame = k + 1
        n = self.clock.inference_interval
        if k % n == n - 1:
            self._logits.pop(k - k % n, None)

    # -- results -------------------------------------------------------------------------
    @property
    def retained_samples(self) -> int:
        """Audio samples kept for windows not handed out yet."""
        with self._lock:
            return int(self._audio.size)

    @property
    def frames_done(self) -> int:
        """Frames whose emotions are known."""
        with self._lock:
            return self._next_frame

    @property
    def finished(self) -> bool:
        """True once the audio has ended and every frame of it has its emotions."""
        with self._lock:
            return (self._ended and self._next_frame
                    >= self.clock.frames_ready(self._received, ended=True))

    def take_emotions(self) -> FrameEmotions:
        """Emotions of the frames completed since the last call."""
        with self._lock:
            first = self._taken
            a2e, smoothed = self._a2e, self._smoothed
            self._a2e, self._smoothed = [], []
            self._taken += len(a2e)
        if not a2e:
            empty = np.zeros((0, len(self._state.params.beginning_emotion)), dtype=np.float32)
            return FrameEmotions(first, empty, empty.copy())
        return FrameEmotions(first, np.stack(a2e), np.stack(smoothed))


def advance_tracks(tracks: Sequence[A2EStreamTrack]) -> None:
    """Post-process every frame the tracks can complete: frame after frame, one vectorised
    :func:`~a2f_inference.pipeline.a2e_postprocess.step_streams` call per step for all the
    tracks that have a frame to do (the per-call cost is shared by every stream of a batch)."""
    ordered = sorted(set(tracks), key=id)  # locks always taken in the same order
    while True:
        for t in ordered:
            t._lock.acquire()
        try:
            ready = [(t, nxt) for t in ordered if (nxt := t._next_step_locked()) is not None]
            if not ready:
                return
            steps = step_streams(
                [t._state for t, _ in ready], np.stack([logits for _, (_k, logits) in ready]),
                [t._preferred(k / float(t.clock.fps)) for t, (k, _l) in ready])
            for (t, (k, _l)), step in zip(ready, steps, strict=True):
                t._record_locked(k, step)
        finally:
            for t in ordered:
                t._lock.release()
