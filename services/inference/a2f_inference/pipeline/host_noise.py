"""Diffusion noise drawn on the host, for engines that run the bare network.

A serving-graph engine makes its own noise (:mod:`~a2f_inference.pipeline.serving`); every
other diffusion engine takes a ``noise`` input per window. :class:`HostNoise` keeps one
stream's generator and either one constant tensor (``constant_noise``) or the next window's
tensor, drawn ahead on the post-processing thread so that the inference thread does not pay
for a full-size draw (16M values for the largest model). Not thread-safe on its own: the
session calls it under its lock, except :meth:`draw`, which only reads immutable state.
"""

from __future__ import annotations

import numpy as np


class HostNoise:
    """One stream's diffusion noise source."""

    def __init__(self, shape: tuple[int, ...], *, constant: bool, seed: int | None) -> None:
        self.shape = shape
        self.constant = constant
        # SFC64: the fastest of numpy's generators
        self.rng = np.random.Generator(np.random.SFC64(seed))
        self._constant: np.ndarray | None = None
        self._next: np.ndarray | None = None  # drawn ahead on the post thread

    @property
    def wants_ahead(self) -> bool:
        """A draw ahead would be used (fresh noise, none drawn yet)."""
        return not self.constant and self._next is None

    def draw(self) -> np.ndarray:
        """A new tensor (call outside the session's lock: it is the slow part)."""
        return self.rng.standard_normal(self.shape, dtype=np.float32)

    def offer_ahead(self, noise: np.ndarray) -> None:
        """Keep ``noise`` for the next window unless one is already kept."""
        if self._next is None:
            self._next = noise

    def next(self) -> np.ndarray:
        """The noise of the next window."""
        if self.constant:
            if self._constant is None:
                self._constant = self.draw()
            return self._constant
        noise, self._next = self._next, None
        return noise if noise is not None else self.draw()

    def clear(self) -> None:
        """Drop the kept tensors (the stream closed)."""
        self._constant = self._next = None
