"""Frames and the exact time arithmetic of the windowing (sample positions as fractions).

Everything here is pure arithmetic over :class:`fractions.Fraction` so that frame counts and
window positions are exact at any frame rate (29.97 fps included) and identical whether the
audio arrives at once or in pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One output animation frame.

    ``weights`` are the 68 blendshape weights (52 ARKit skin names, then 16 tongue names, in
    the order the NIM emits them). ``audio`` is the slice of the stream's *original-rate*
    16-bit PCM that belongs to this frame: consecutive frames' slices tile the input exactly
    (the last frame's slice runs to the end of the input).
    """

    index: int
    time_code_s: float
    weights: np.ndarray  # float32 [68]
    audio: bytes


def as_fraction(x: float | int | Fraction) -> Fraction:
    """An exact fraction for a rate given as float (29.97 -> 2997/100)."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(x)
    return Fraction(x).limit_denominator(1_000_000)


def round_half_up(x: Fraction) -> int:
    """Nearest integer, halves rounded up (deterministic for negative values too)."""
    return math.floor(x + Fraction(1, 2))


def frames_before(n_samples: int, samplerate: int, fps: Fraction) -> int:
    """How many frames k >= 0 sit at a sample position k * samplerate / fps < n_samples."""
    if n_samples <= 0:
        return 0
    # ceil(n * fps / samplerate) in integers (this runs several times per batch)
    return -(-n_samples * fps.numerator // (fps.denominator * samplerate))


def frame_sample(k: int, samplerate: int, fps: Fraction) -> Fraction:
    """Sample position of frame k (exact)."""
    return Fraction(k * samplerate) / fps


def audio_boundary(k: int, input_rate: int, fps: Fraction) -> int:
    """First original-rate sample of output frame k's audio slice."""
    return round_half_up(Fraction(k * input_rate) / fps)


@dataclass(frozen=True)
class RegressionClock:
    """Windowing of a regression model: one frame per inference at the output rate.

    Frame k sits at t_k = k * samplerate / fps and reads [c_k - buffer_ofs, c_k - buffer_ofs
    + buffer_len) where c_k is t_k rounded to the nearest sample.
    """

    samplerate: int
    buffer_len: int
    buffer_ofs: int
    fps: Fraction

    def window_start(self, k: int) -> int:
        # round_half_up(k * samplerate / fps) - buffer_ofs, in integers (runs once per frame)
        fn, fd = self.fps.numerator, self.fps.denominator
        return (2 * k * self.samplerate * fd + fn) // (2 * fn) - self.buffer_ofs

    def window_starts(self, k0: int, n: int) -> np.ndarray:
        """:meth:`window_start` of frames ``k0 .. k0 + n - 1`` (int64)."""
        fn, fd = self.fps.numerator, self.fps.denominator
        k = np.arange(k0, k0 + n, dtype=np.int64)
        return (2 * self.samplerate * fd * k + fn) // (2 * fn) - self.buffer_ofs

    def window_end(self, k: int) -> int:
        return self.window_start(k) + self.buffer_len

    def frames_ready(self, received: int) -> int:
        """Frames whose whole window has been received (the look-ahead has arrived)."""
        # window_end(k) <= received  <=>  round(t_k) <= received - (len - ofs)
        limit = received - (self.buffer_len - self.buffer_ofs)
        if limit < 0:
            return 0
        # round_half_up(t_k) <= limit  <=>  t_k < limit + 1/2; the count is
        # ceil((limit + 1/2) * fps / samplerate), in integers
        fn, fd = self.fps.numerator, self.fps.denominator
        return -(-(2 * limit + 1) * fn // (2 * fd * self.samplerate))

    def total_frames(self, n_samples: int) -> int:
        return frames_before(n_samples, self.samplerate, self.fps)

    @property
    def lookahead_s(self) -> float:
        return (self.buffer_len - self.buffer_ofs) / self.samplerate


@dataclass(frozen=True)
class DiffusionClock:
    """Windowing of a diffusion model (all sizes from the model folder).

    Inference k reads [w_k, w_k + buffer_len) with w_k = -padding_left + k * stride and
    predicts ``left + center + right`` frames at the native rate; the ``center`` frames
    starting at prediction frame ``left`` are kept. Native frame g (time g / native_fps)
    comes from inference (g + warmup) // center, position (g + warmup) % center; frames
    with g < 0 are warm-up and are never emitted.
    """

    samplerate: int
    buffer_len: int
    padding_left: int
    left: int
    center: int
    right: int

    @property
    def native_fps(self) -> Fraction:
        return Fraction((self.left + self.center + self.right) * self.samplerate,
                        self.buffer_len)

    @property
    def stride(self) -> int:
        s = Fraction(self.center * self.samplerate) / self.native_fps
        if s.denominator != 1:
            raise ValueError(f"diffusion stride {s} is not a whole number of samples")
        return int(s)

    @property
    def warmup(self) -> int:
        """Native frames before t=0 in inference 0 (45 for the published models)."""
        w = Fraction(self.padding_left) * self.native_fps / self.samplerate - self.left
        if w.denominator != 1 or w < 0:
            raise ValueError(f"diffusion warm-up {w} frames is not a whole non-negative number")
        return int(w)

    def window_start(self, k: int) -> int:
        return -self.padding_left + k * self.stride

    def window_end(self, k: int) -> int:
        return self.window_start(k) + self.buffer_len

    def inferences_ready(self, received: int) -> int:
        """Inferences whose whole window has been received."""
        # -pl + k*stride + len <= received
        return max(0, (received + self.padding_left - self.buffer_len) // self.stride + 1)

    def total_native(self, n_samples: int) -> int:
        return frames_before(n_samples, self.samplerate, self.native_fps)

    def total_inferences(self, n_samples: int) -> int:
        g = self.total_native(n_samples)
        if g == 0:
            return 0
        return (g - 1 + self.warmup) // self.center + 1

    def first_native(self, k: int) -> int:
        """Native index of the first kept frame of inference k (may be negative)."""
        return k * self.center - self.warmup

    @property
    def lookahead_s(self) -> float:
        """Audio needed past a frame's time, worst case (first kept frame of an inference)."""
        first = Fraction(self.left * self.samplerate) / self.native_fps
        return float(self.buffer_len - first) / self.samplerate
