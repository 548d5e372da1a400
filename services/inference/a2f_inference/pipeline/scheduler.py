"""The cross-stream batch scheduler of one model version, and an offline helper.

:class:`BatchScheduler` owns one worker thread (the only thread that calls ``engine.run``).
Sessions tell it when they may have ready windows (:meth:`BatchScheduler.submit`, called by
the session itself); the worker gathers windows from all such streams, round-robin, into a
batch of at most ``max_batch`` windows, waiting at most ``max_wait_s`` for more once it has
some, stacks each input along its batch axis, runs the engine, splits the outputs, runs every
stream's post-processing once per batch and finally calls ``on_ready(session)`` for each
stream that got frames (or failed). A diffusion stream never has two windows in flight (its
GRU state goes from one inference to the next); a regression stream may put many of its
frames in one batch. Per-stream order is guaranteed because one thread does all of it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from a2f_inference.pipeline.frames import Frame
from a2f_inference.pipeline.runtime import ModelRuntime, batch_axis
from a2f_inference.pipeline.stream import StreamParams, StreamSession, WorkItem, complete_items
from a2f_volume.errors import DeadlineExceededError, UnavailableError

logger = logging.getLogger(__name__)

ReadyCallback = Callable[[StreamSession], None]


@dataclass(frozen=True)
class BatchStats:
    """What one batch did (for metrics)."""

    size: int  # windows in the batch
    streams: int  # streams in the batch
    queue_wait_s: tuple[float, ...]  # per stream: from its windows being ready to the run
    inference_s: float  # engine.run wall time
    postprocess_s: float  # post-processing wall time, all streams of the batch


class SchedulerObserver(Protocol):
    """Optional metrics hook; called on the worker thread after every batch."""

    def on_batch(self, stats: BatchStats) -> None: ...


class BatchScheduler:
    """Batches ready windows of every stream of one :class:`ModelRuntime`.

    ``max_batch``: windows per engine call (default: the runtime's, i.e. ``trt_info``
    ``MAX_BATCH_SIZE`` capped by the engine). ``max_wait_s``: how long a non-full batch
    waits for other streams' windows (only when other streams are open). ``on_ready``: called
    on the worker thread with each session that got frames or failed (the server wraps it in
    ``loop.call_soon_threadsafe``). ``observer``: optional :class:`SchedulerObserver`.
    ``pipelined``: post-process on a second thread while the engine runs the next batch.
    That pays off when the engine leaves CPU idle (TensorRT on a GPU; the server, whose event
    loop and gaps between batches leave room); in a process that only runs batches with ONNX
    Runtime on every core it adds contention (measured on 2 cores), hence off by default here
    and on in the server (``--postprocess overlap``).
    """

    def __init__(self, runtime: ModelRuntime, *, max_batch: int | None = None,
                 max_wait_s: float = 0.002, on_ready: ReadyCallback | None = None,
                 observer: SchedulerObserver | None = None, pipelined: bool = False) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s {max_wait_s} must be >= 0")
        self.runtime = runtime
        engine_max = int(getattr(runtime.engine, "max_batch", 0) or 0) or runtime.max_batch
        self.max_batch = (runtime.max_batch if max_batch is None
                          else max(1, min(int(max_batch), engine_max)))
        self.max_wait_s = float(max_wait_s)
        self.on_ready = on_ready
        self.observer = observer
        self._cond = threading.Condition()
        self._queue: deque[StreamSession] = deque()
        self._queued: set[StreamSession] = set()
        self._thread: threading.Thread | None = None
        self.pipelined = pipelined
        # inference -> post-processing hand-over (bounded: back-pressure on the engine)
        self._post_q: queue.Queue[_Done | None] = queue.Queue(maxsize=2)
        self._post_thread: threading.Thread | None = None
        self._buffers: dict[str, np.ndarray] | None = None  # batch inputs, reused
        self._stopping = False
        self._stopped = False
        self._abort = False  # grace period over: drop what is left
        self.batches = 0
        self.windows = 0
        runtime._attach(self)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        """Start the worker thread (idempotent) and pick up streams already open."""
        with self._cond:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"a2f-batch-{self.runtime.name}", daemon=True)
            if self.pipelined:
                self._post_thread = threading.Thread(
                    target=self._run_post, name=f"a2f-post-{self.runtime.name}", daemon=True)
                self._post_thread.start()
            self._thread.start()
        for s in self.runtime.sessions():
            self.submit(s)

    def stop(self, grace_s: float = 5.0) -> None:
        """Finish the work already queued for up to ``grace_s``, then stop (idempotent).

        Streams that still expect frames afterwards fail with :class:`UnavailableError`.
        """
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        deadline = time.monotonic() + max(0.0, grace_s)
        if thread is not None:
            thread.join(max(0.0, grace_s))
            if thread.is_alive():
                logger.warning("batch worker of %s still busy after %.1fs; abandoning the "
                               "remaining work", self.runtime.name, grace_s)
                self._abort = True
        post = self._post_thread
        if post is not None:
            with contextlib.suppress(queue.Full):
                self._post_q.put(None, timeout=max(0.0, deadline - time.monotonic()) + 0.1)
            post.join(max(0.0, deadline - time.monotonic()) + 0.1)
        self.runtime._detach(self)
        err = UnavailableError(f"model {self.runtime.name!r} was unloaded; reopen the stream")
        for s in self.runtime.sessions():
            if not s.finished and s.error is None:
                s.fail(err)
                self._ready(s)

    def submit(self, session: StreamSession) -> None:
        """A session may have ready windows (called by the session; any thread)."""
        with self._cond:
            if session in self._queued:
                return
            self._queued.add(session)
            self._queue.append(session)
            self._cond.notify()

    # -- worker --------------------------------------------------------------------------------
    def _run(self) -> None:
        logger.info("batch scheduler of %s started: max batch %d, max wait %.1f ms, %s",
                    self.runtime.name, self.max_batch, 1000 * self.max_wait_s,
                    "pipelined post-processing" if self.pipelined else "single thread")
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if (not self._queue and self._stopping) or self._abort:
                    break
            items = self._gather()
            if not items:
                continue
            try:
                self._run_batch(items)
            except Exception:  # the worker must survive; streams already failed
                logger.exception("batch worker of %s: unexpected error", self.runtime.name)
        logger.info("batch scheduler of %s stopped after %d batches (%d windows)",
                    self.runtime.name, self.batches, self.windows)

    def _gather(self) -> list[list[WorkItem]]:
        """Ready windows for one batch: per stream (first come first), its items in order."""
        by_session: dict[StreamSession, list[WorkItem]] = {}
        total = 0
        deadline: float | None = None
        while True:
            while total < self.max_batch:
                with self._cond:
                    if not self._queue:
                        break
                    session = self._queue.popleft()
                    self._queued.discard(session)
                    waiting = len(self._queue)
                share = max(1, (self.max_batch - total) // (waiting + 1))
                item = session.take_work(share, self._buffer_views(total, share))
                if item is None:
                    continue
                item.batch_pos = total
                total += item.count
                by_session.setdefault(session, []).append(item)
                if item.count == share:  # may have more: back of the queue
                    self.submit(session)
            if total >= self.max_batch or total == 0 or self.max_wait_s <= 0:
                break
            if self.runtime.open_streams <= len(by_session):
                break  # nobody else could add a window
            now = time.perf_counter()
            if deadline is None:
                deadline = now + self.max_wait_s
            if now >= deadline:
                break
            with self._cond:
                if not self._queue and not self._stopping:
                    self._cond.wait(deadline - now)
                if not self._queue:
                    break
        return list(by_session.values())

    def _buffer_views(self, start: int, count: int) -> dict[str, np.ndarray] | None:
        """Room for ``count`` windows at ``start`` in the reusable batch input buffer (for
        inputs whose only dynamic axis is the leading batch axis; None otherwise)."""
        if self._buffers is None:
            specs = self.runtime.input_specs.values()
            if not specs or any(batch_axis(s) != 0 or min(s.shape[1:], default=1) < 1
                                for s in specs):
                self._buffers = {}
            else:
                self._buffers = {s.name: np.zeros((self.max_batch, *s.shape[1:]), s.dtype)
                                 for s in specs}
        if not self._buffers:
            return None
        return {name: buf[start : start + count] for name, buf in self._buffers.items()}

    def _batch_feeds(self, flat: list[WorkItem]) -> dict[str, np.ndarray]:
        """The engine inputs of the batch: a prefix of the batch buffer when every window
        was written there in order, else the items' inputs concatenated."""
        feeds = {}
        total = sum(it.count for it in flat)
        for name, spec in self.runtime.input_specs.items():
            arrays = [it.feeds[name] for it in flat]
            buf = self._buffers.get(name) if self._buffers else None
            if buf is not None and _in_order(arrays, buf):
                feeds[name] = buf[:total]
            elif len(arrays) == 1:
                feeds[name] = arrays[0]
            else:
                feeds[name] = np.concatenate(arrays, axis=batch_axis(spec))
        return feeds

    def _run_batch(self, groups: list[list[WorkItem]]) -> None:
        runtime = self.runtime
        t_start = time.perf_counter()
        # the batch holds the windows in the order they were taken (a stream may have taken
        # twice); from here on one item per stream, its output rows gathered from its parts
        flat = sorted((it for g in groups for it in g), key=lambda it: it.batch_pos)
        items = [g[0] if len(g) == 1 else _merged(g) for g in groups]
        try:
            feeds = self._batch_feeds(flat)
            outputs = runtime.engine.run(feeds)
        except Exception as err:  # reported to every stream of the batch
            logger.exception("inference on %s failed for a batch of %d windows", runtime.name,
                             sum(it.count for it in items))
            for it in items:
                it.session.fail(err)
                self._ready(it.session)
            return
        t_inf = time.perf_counter()
        starts: dict[int, int] = {}
        offset = 0
        for it in flat:
            starts[id(it)] = offset
            offset += it.count
        axes = {name: batch_axis(spec) if (spec := runtime.output_specs.get(name)) else 0
                for name in outputs}
        parts: list[dict[str, np.ndarray]] = []
        for group, it in zip(groups, items, strict=True):
            part = {}
            for name, arr in outputs.items():
                pieces = [_rows(arr, axes[name], starts[id(g)], g.count) for g in group]
                part[name] = (pieces[0] if len(pieces) == 1
                              else np.concatenate(pieces, axis=axes[name]))
            it.session.accept(it, part)
            parts.append(part)
        self.batches += 1
        self.windows += offset
        done = _Done(items, parts, t_start, t_inf)
        if self.pipelined:
            while not self._abort:
                try:
                    self._post_q.put(done, timeout=0.5)
                    break
                except queue.Full:
                    continue
        else:
            self._postprocess(done)

    def _run_post(self) -> None:
        while True:
            done = self._post_q.get()
            if done is None:
                return
            try:
                self._postprocess(done)
            except Exception:  # the thread must survive; the streams already failed
                logger.exception("post-processing of %s: unexpected error", self.runtime.name)

    def _postprocess(self, done: _Done) -> None:
        t0 = time.perf_counter()
        complete_items(done.items, done.parts)
        t_end = time.perf_counter()
        for it in done.items:
            self._ready(it.session)
        if self.observer is not None:
            try:
                self.observer.on_batch(BatchStats(
                    size=sum(it.count for it in done.items), streams=len(done.items),
                    queue_wait_s=tuple(max(0.0, done.t_start - it.ready_at)
                                       for it in done.items),
                    inference_s=done.t_inf - done.t_start, postprocess_s=t_end - t0))
            except Exception:  # metrics must not stop inference
                logger.exception("scheduler observer failed")

    def _ready(self, session: StreamSession) -> None:
        cb = self.on_ready
        if cb is None:
            return
        try:
            cb(session)
        except Exception:  # a listener must not stop the worker
            logger.exception("on_ready callback failed")


@dataclass
class _Done:
    """A batch after inference, waiting for post-processing."""

    items: list[WorkItem]
    parts: list[dict[str, np.ndarray]]
    t_start: float
    t_inf: float


def _rows(arr: np.ndarray, axis: int, start: int, count: int) -> np.ndarray:
    index = [slice(None)] * arr.ndim
    index[axis] = slice(start, start + count)
    return arr[tuple(index)]


def _in_order(arrays: list[np.ndarray], buf: np.ndarray) -> bool:
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


def _merged(items: list[WorkItem]) -> WorkItem:
    """Consecutive items of one (regression) stream as one item (inputs are not kept: the
    batch was already assembled from the parts)."""
    first = items[0]
    return WorkItem(first.session, sum(it.count for it in items), {}, first.first_unit,
                    first.ready_at)


def run_offline(runtime: ModelRuntime, pcm: bytes, rate: int, *, identity: str | None = None,
                params: StreamParams | dict[str, object] | None = None,
                output_fps: float = 30.0, constant_noise: bool = False, seed: int | None = None,
                emotions: list[tuple[float, dict[str, float]]] | None = None,
                chunk_bytes: int | None = None, timeout_s: float = 600.0) -> list[Frame]:
    """Run one whole clip through a stream and return every frame (for tests and the demo).

    Uses the runtime's running scheduler, or a temporary one. ``chunk_bytes`` feeds the PCM in
    pieces of that size (default: all at once).
    """
    own: BatchScheduler | None = None
    sched = runtime.scheduler
    if sched is None or not sched.running:
        own = BatchScheduler(runtime)
        own.start()
    session = runtime.open_stream(identity, params, input_rate=rate, output_fps=output_fps,
                                  constant_noise=constant_noise, seed=seed)
    frames: list[Frame] = []
    try:
        if emotions:
            session.push_emotions(emotions)
        step = chunk_bytes or max(1, len(pcm))
        for i in range(0, len(pcm), step):
            session.push_audio(pcm[i : i + step])
            frames.extend(session.take_frames())
        session.end_of_audio()
        deadline = time.monotonic() + timeout_s
        while True:
            frames.extend(session.take_frames())
            if session.error is not None:
                raise session.error
            if session.done:
                return frames
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(
                    f"offline run on {runtime.name!r} took over {timeout_s:g} s")
            session.wait(min(left, 1.0))
    finally:
        session.close()
        if own is not None:
            own.stop()
            if sched is not None and not sched._stopped:
                runtime._attach(sched)  # give the runtime back to its (not yet started) owner
