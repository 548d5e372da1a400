"""Batch assembly helpers of the scheduler, and what it reports about each batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from a2f_engine.base import TensorSpec
from a2f_inference.pipeline.runtime import batch_axis
from a2f_inference.pipeline.session import WorkItem


@dataclass(frozen=True)
class BatchStats:
    """What one batch did (for metrics)."""

    size: int  # windows in the batch
    streams: int  # streams in the batch
    queue_wait_s: tuple[float, ...]  # per stream: from its windows being ready to the run
    inference_s: float  # engine.run wall time
    postprocess_s: float  # post-processing wall time, all streams of the batch
    postprocess_wait_s: float = 0.0  # from the end of inference to post-processing's start


class SchedulerObserver(Protocol):
    """Optional metrics hook; called on the worker thread after every batch."""

    def on_batch(self, stats: BatchStats) -> None: ...


class BatchFill:
    """The batch-fill wait of one gathering (the face and the A2E schedulers share it): once
    a worker has some windows, it waits up to ``max_wait_s`` for other streams to queue
    theirs, unless the batch is full or no other stream could add one."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._deadline: float | None = None

    def wait_for_more(self, cond: threading.Condition, queue: Sized,
                      stopping: Callable[[], bool], *, total: int, limit: int,
                      streams: int, open_streams: Callable[[], int]) -> bool:
        """True when ``queue`` (guarded by ``cond``) holds more work to gather in time;
        ``total`` windows from ``streams`` streams are gathered so far, ``limit`` at most."""
        if total >= limit or total == 0 or self.max_wait_s <= 0:
            return False
        if open_streams() <= streams:
            return False  # nobody else could add a window
        now = time.perf_counter()
        if self._deadline is None:
            self._deadline = now + self.max_wait_s
        if now >= self._deadline:
            return False
        with cond:
            if not len(queue) and not stopping():
                cond.wait(self._deadline - now)
            return bool(len(queue))


def new_buffers(specs: Iterable[TensorSpec], max_batch: int) -> dict[str, np.ndarray]:
    """A worker's reusable batch input buffer: room for ``max_batch`` windows of every
    input whose only dynamic axis is the leading batch axis (empty otherwise)."""
    specs = list(specs)
    if not specs or any(batch_axis(s) != 0 or min(s.shape[1:], default=1) < 1
                        for s in specs):
        return {}
    return {s.name: np.zeros((max_batch, *s.shape[1:]), s.dtype) for s in specs}


def batch_feeds(input_specs: dict[str, TensorSpec], flat: list[WorkItem],
                buffers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The engine inputs of the batch: a prefix of the batch buffer when every window
    was written there in order, else the items' inputs concatenated."""
    feeds = {}
    total = sum(it.count for it in flat)
    for name, spec in input_specs.items():
        arrays = [it.feeds[name] for it in flat]
        buf = buffers.get(name)
        if buf is not None and in_order(arrays, buf):
            feeds[name] = buf[:total]
        elif len(arrays) == 1:
            feeds[name] = arrays[0]
        else:
            feeds[name] = np.concatenate(arrays, axis=batch_axis(spec))
    return feeds


def views(buffers: dict[str, np.ndarray], start: int, count: int
           ) -> dict[str, np.ndarray] | None:
    """Room for ``count`` windows at ``start`` in a batch input buffer (None: no buffer)."""
    if not buffers:
        return None
    return {name: buf[start : start + count] for name, buf in buffers.items()}


def rows(arr: np.ndarray, axis: int, start: int, count: int) -> np.ndarray:
    index = [slice(None)] * arr.ndim
    index[axis] = slice(start, start + count)
    return arr[tuple(index)]


def in_order(arrays: list[np.ndarray], buf: np.ndarray) -> bool:
    """Whether ``arrays`` are consecutive views of ``buf`` starting at its first row."""
    if not arrays or not all(a.base is buf for a in arrays):
        return False
    row = buf.strides[0]
    pos = buf.__array_interface__["data"][0]
    for a in arrays:
        if a.__array_interface__["data"][0] != pos:
            return False
        pos += a.shape[0] * row
    return True


def merged(items: list[WorkItem]) -> WorkItem:
    """Consecutive items of one (regression) stream as one item (inputs are not kept: the
    batch was already assembled from the parts)."""
    first = items[0]
    return WorkItem(first.session, sum(it.count for it in items), {}, first.first_unit,
                    first.ready_at)
