"""The engine interface every backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of an engine tensor; ``-1`` marks a dynamic axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def batch_axis(self) -> int:
        """Index of the (first) dynamic axis, the batch axis; -1 if the tensor has none."""
        for i, d in enumerate(self.shape):
            if d < 0:
                return i
        return -1


@runtime_checkable
class Engine(Protocol):
    """A loaded network that runs batches.

    ``run`` takes every input by name (float32 arrays whose batch axis is at most
    ``max_batch``) and returns every output by name. Implementations are safe to call from
    several threads at once: the scheduler's inference workers run batches side by side.
    """

    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
