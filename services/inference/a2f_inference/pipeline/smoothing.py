"""The smoothing filters of post-processing.

Two cascaded first-order exponential smoothers (a 2nd-order filter) per face half,
``alpha = 1 - 0.5 ** (dt / smoothing)`` with ``dt = 1 / fps``; ``smoothing == 0`` passes the
input through; the first frame seeds both stages. Since the first frame seeds the state, an
affine map commutes with the filter.
"""

from __future__ import annotations

import numpy as np


def smoothing_alpha(dt_s: float, smoothing_s: float) -> float:
    """``1 - 0.5 ** (dt / smoothing)``; 1 (pass-through) when ``smoothing`` is 0."""
    if smoothing_s <= 0.0:
        return 1.0
    return float(1.0 - 0.5 ** (dt_s / smoothing_s))


class SecondOrderSmoother:
    """Two cascaded exponential smoothers over vectors; the first frame seeds both."""

    def __init__(self, smoothing_s: float, dt_s: float) -> None:
        self.alpha = smoothing_alpha(dt_s, smoothing_s)
        self._s1: np.ndarray | None = None
        self._s2: np.ndarray | None = None

    def reset(self) -> None:
        self._s1 = self._s2 = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Filter ``[F, D]`` consecutive frames; returns ``[F, D]`` (float64)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if self.alpha >= 1.0:
            self._s1 = self._s2 = x[-1].copy()
            return x.copy()
        if x.shape[0] == 0:
            return x.copy()
        if self._s1 is None or self._s2 is None:
            self._s1, self._s2 = x[0].copy(), x[0].copy()  # the first frame seeds both
        s1, s2 = _two_stages(x[None], self._s1[None], self._s2[None], self.alpha)
        self._s1, self._s2 = s1[0, -1].copy(), s2[0, -1].copy()
        return s2[0]


def smooth_streams(smoothers: list[SecondOrderSmoother], x: np.ndarray, counts: list[int]
                   ) -> np.ndarray:
    """Run ``smoothers`` (one per stream, the same rate) over ``x`` ``[K, Fmax, D]``, stream
    ``k`` having ``counts[k]`` frames (rows past it are padding); each smoother's state
    advances by its own frames. Returns ``[K, Fmax, D]`` (float64; padding rows undefined).
    """
    a = smoothers[0].alpha
    last = [x[k, c - 1] for k, c in enumerate(counts)]
    if a >= 1.0:
        for sm, v in zip(smoothers, last, strict=True):
            sm._s1 = sm._s2 = v.copy()
        return x
    s1_0 = np.stack([sm._s1 if sm._s1 is not None else x[k, 0]
                     for k, sm in enumerate(smoothers)])  # the first frame seeds both
    s2_0 = np.stack([sm._s2 if sm._s2 is not None else x[k, 0]
                     for k, sm in enumerate(smoothers)])
    s1, s2 = _two_stages(x, s1_0, s2_0, a)
    for k, (sm, c) in enumerate(zip(smoothers, counts, strict=True)):
        sm._s1, sm._s2 = s1[k, c - 1].copy(), s2[k, c - 1].copy()
    return s2


def _two_stages(x: np.ndarray, s1: np.ndarray, s2: np.ndarray, a: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Both stages ``y[k] = (1 - a) y[k-1] + a x[k]`` over ``x`` ``[K, F, D]`` from the
    states ``s1``, ``s2`` ``[K, D]``; returns every frame of both stages. Frame by frame
    over all streams at once: few frames per call are the common case, where this beats
    ``scipy.signal.lfilter``'s set-up, and the result does not depend on how the frames are
    split into calls."""
    out1 = np.empty(x.shape)
    out2 = np.empty(x.shape)
    b = 1.0 - a
    for f in range(x.shape[1]):
        s1 = b * s1 + a * x[:, f]
        s2 = b * s2 + a * s1
        out1[:, f] = s1
        out2[:, f] = s2
    return out1, out2
