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
    ``max_batch``) except the resident ones, and returns every output by name.
    Implementations are safe to call from several threads at once: the scheduler's
    inference workers run batches side by side.

    ``set_resident_input`` fixes an input whose value is the same for every run (a constant
    noise tensor, for instance): the value is kept by the engine (on the device, once, for
    TensorRT) and ``run`` no longer takes that input. ``inputs`` still lists it; its shape
    is the full shape the value was given with.

    ``close`` frees everything the engine holds; ``run`` afterwards raises
    :class:`~a2f_engine.errors.EngineClosedError`.
    """

    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def set_resident_input(self, name: str, value: np.ndarray) -> None: ...

    def close(self) -> None: ...


def check_resident_value(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    """``value`` as a C-contiguous array of the input's element type, or ValueError naming
    the input, the shape given and the shape allowed (static axes must match exactly)."""
    arr = np.ascontiguousarray(value, dtype=spec.dtype)
    if arr.ndim != len(spec.shape) or any(
            d >= 0 and d != a for d, a in zip(spec.shape, arr.shape, strict=True)):
        raise ValueError(f"resident input {spec.name!r}: shape {arr.shape} does not fit the "
                         f"input's shape {spec.shape} (-1 = any size)")
    if arr.size == 0:
        raise ValueError(f"resident input {spec.name!r}: empty array")
    return arr
