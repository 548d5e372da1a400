"""A stream's output side: post-processed weights at the model's rate, plus the original PCM,
become frames at the output rate, each with the audio it covers.

When the output rate divides the native rate every (native / output)-th native frame is
taken (aligned to t = 0); otherwise the weights are interpolated linearly between the two
native frames around each output time. Frame ``i`` carries the PCM samples
``[round(i * rate / fps), round((i + 1) * rate / fps))`` of the original input (the last
frame: up to the end).
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction

import numpy as np

from a2f_inference.pipeline.frames import Frame, frames_before
from a2f_inference.pipeline.stream_params import NETWORK_RATE_HZ


class FrameAssembler:
    """Turns native frames and original-rate PCM into output frames. Not thread-safe: the
    session calls it under its lock."""

    def __init__(self, input_rate: int, fps: Fraction, native_fps: Fraction) -> None:
        self.input_rate = int(input_rate)
        self.fps = fps
        self.native_fps = native_fps
        self.ratio = native_fps / fps  # native frames per output frame
        self.pcm = bytearray()  # original-rate PCM from sample self.pcm_base on
        self.pcm_base = 0
        self.samples_in = 0  # original-rate samples received
        # native frames (post-processed weights) not yet turned into output frames
        self._native: deque[np.ndarray] = deque()
        self._native_base = 0  # native index of self._native[0]
        self._native_made = 0  # native frames made so far (they come in order)
        self.next_out = 0  # next output frame index to release

    def add_pcm(self, data: bytes, samples: int) -> None:
        """Original-rate 16-bit PCM (``samples`` samples) as received."""
        self.pcm += data
        self.samples_in += samples

    def add_native(self, weights: np.ndarray) -> None:
        """The next post-processed native frames, in order."""
        for row in weights:
            self._native.append(row)
        self._native_made += weights.shape[0]

    def total_out(self, network_samples: int | None) -> int | None:
        """Output frames of the whole stream once it has ended (``network_samples``: the
        16 kHz samples of the whole stream; None while it has not ended)."""
        if network_samples is None:
            return None
        return frames_before(network_samples, NETWORK_RATE_HZ, self.fps)

    def all_released(self, network_samples: int | None) -> bool:
        total = self.total_out(network_samples)
        return total is not None and self.next_out >= total

    def clear(self) -> None:
        self.pcm = bytearray()
        self._native.clear()

    def release(self, network_samples: int | None) -> list[Frame]:
        """Every output frame whose native frames and audio are in (``network_samples`` as in
        :meth:`total_out`)."""
        ended = network_samples is not None
        total = self.total_out(network_samples)
        total_native = None
        if network_samples is not None:
            total_native = frames_before(network_samples, NETWORK_RATE_HZ, self.native_fps)
        # integer forms of the exact fractions (this runs once per frame)
        rn, rd = self.ratio.numerator, self.ratio.denominator
        fn, fd = self.fps.numerator, self.fps.denominator
        rate2 = 2 * self.input_rate * fd
        fps_f = float(self.fps)
        released = []
        a1 = self.pcm_base
        n_orig = self.samples_in
        while total is None or self.next_out < total:
            i = self.next_out
            lo, rem = divmod(i * rn, rd)  # native position i * ratio = lo + rem / rd
            hi = lo + 1 if rem else lo
            if total_native is not None and hi >= total_native:
                hi, rem = lo, 0
            if hi >= self._native_made:
                break
            last = total is not None and i == total - 1
            # audio_boundary(i) = round_half_up(i * rate / fps)
            a0 = (i * rate2 + fn) // (2 * fn)
            a1 = n_orig if last else ((i + 1) * rate2 + fn) // (2 * fn)
            if not ended and a1 > n_orig:
                break
            a0, a1 = min(a0, n_orig), min(max(a1, a0), n_orig)
            w_lo = self._native[lo - self._native_base]
            if rem:
                f = rem / rd
                w = (1.0 - f) * w_lo + f * self._native[hi - self._native_base]
            else:
                w = w_lo
            audio = bytes(self.pcm[2 * (a0 - self.pcm_base) : 2 * (a1 - self.pcm_base)])
            released.append(Frame(i, i / fps_f, np.asarray(w, dtype=np.float32), audio))
            self.next_out = i + 1
            # forget native frames no later output frame needs
            keep_native = ((i + 1) * rn) // rd
            while self._native_base < keep_native and self._native:
                self._native.popleft()
                self._native_base += 1
        if released:
            drop = a1 - self.pcm_base  # PCM no later frame needs
            if drop > 0:
                del self.pcm[: 2 * drop]
                self.pcm_base = a1
        return released
