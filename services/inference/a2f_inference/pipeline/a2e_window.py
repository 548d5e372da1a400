"""Audio2Emotion windowing: which frames run A2E, and the audio window each one reads.

Frame ``k`` of a stream sits at ``t_k = k * samplerate / fps`` (samples at the A2E rate,
16 kHz). Its A2E window is centred on it: ``[c_k - T/2, c_k - T/2 + T)`` with ``c_k`` = t_k
rounded half up (the same arithmetic as a regression face model with ``buffer_ofs = T/2``, so
:class:`a2f_inference.pipeline.frames.RegressionClock` does it). Samples outside the audio
received so far are zeros; the window is multiplied by the input strength. A2E runs on frames
``0, N, 2N, ...`` (``N = inference_interval``); the frames in between reuse the last logits.

Look-ahead: the window of frame k ends ``T - T/2`` samples after ``c_k`` (1.875 s for
T = 60000), so while audio is still streaming frame k can run only once that much audio past
it has arrived (:meth:`A2EClock.frames_ready`); at the end of the stream the missing part is
zeros and nothing waits. See docs/emotion.md for what that does to latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np

from a2f_inference.pipeline.frames import RegressionClock, as_fraction

#: NIM's default ``a2e.inference_interval`` (frames between two A2E runs at 30 fps).
DEFAULT_INFERENCE_INTERVAL = 10


@dataclass(frozen=True)
class A2EClock:
    """A2E windows of one stream's frames."""

    samplerate: int
    window_samples: int
    fps: Fraction
    inference_interval: int = DEFAULT_INFERENCE_INTERVAL

    def __post_init__(self) -> None:
        if self.window_samples < 2:
            raise ValueError(f"window_samples {self.window_samples}: expected >= 2")
        if self.inference_interval < 1:
            raise ValueError(f"inference_interval {self.inference_interval}: expected >= 1")
        if self.samplerate <= 0 or self.fps <= 0:
            raise ValueError("samplerate and fps must be positive")

    @classmethod
    def create(cls, samplerate: int, window_samples: int, fps: float | Fraction,
               inference_interval: int = DEFAULT_INFERENCE_INTERVAL) -> A2EClock:
        return cls(samplerate, window_samples, as_fraction(fps), inference_interval)

    @cached_property
    def _clock(self) -> RegressionClock:
        return RegressionClock(self.samplerate, self.window_samples, self.window_samples // 2,
                               self.fps)

    @property
    def half(self) -> int:
        """Samples of the window before the frame (``T // 2``)."""
        return self.window_samples // 2

    @property
    def lookahead_s(self) -> float:
        """Audio needed past a frame before its window is complete."""
        return self._clock.lookahead_s

    def window_start(self, k: int) -> int:
        return self._clock.window_start(k)

    def runs_a2e(self, k: int) -> bool:
        """True on the frames A2E runs for (``k % inference_interval == 0``)."""
        return k % self.inference_interval == 0

    def inference_frames(self, k0: int, k1: int) -> list[int]:
        """The frames in ``[k0, k1)`` that run A2E."""
        n = self.inference_interval
        first = -(-k0 // n) * n
        return list(range(first, k1, n))

    def frames_ready(self, received: int, ended: bool = False) -> int:
        """Frames whose window has fully arrived (all frames of the audio once ``ended``)."""
        total = self._clock.total_frames(received)
        if ended:
            return total
        return min(self._clock.frames_ready(received), total)

    def windows(self, audio: np.ndarray, frames: list[int], input_strength: float = 1.0,
                offset: int = 0) -> np.ndarray:
        """float32 [len(frames), T]: each frame's window of ``audio`` (float, A2E rate; its
        first sample is stream sample ``offset``), zero outside it, times ``input_strength``."""
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        t = self.window_samples
        out = np.zeros((len(frames), t), dtype=np.float32)
        for row, k in enumerate(frames):
            s = self.window_start(k)
            lo, hi = max(s, offset), min(s + t, offset + x.size)
            if hi > lo:
                out[row, lo - s:hi - s] = x[lo - offset:hi - offset]
        if input_strength != 1.0:
            out *= np.float32(input_strength)
        return out
