"""The cross-stream batch scheduler of one model version, and an offline helper.

:class:`BatchScheduler` runs ``workers`` inference threads (the only threads that call
``engine.run``). Sessions tell it when they may have ready windows
(:meth:`BatchScheduler.submit`, called by the session itself); a free worker gathers windows
from all such streams, round-robin, into a batch of at most ``max_batch`` windows, waiting at
most ``max_wait_s`` for more once it has some, stacks each input along its batch axis and runs
the engine. Several workers run batches side by side (on a CPU: one engine thread each, no
synchronisation inside an inference). Post-processing runs once per batch, batch after batch
in the order the batches were gathered, and finally calls ``on_ready(session)`` for each
stream that got frames (or failed). A diffusion stream never has two windows in flight (its
GRU state goes from one inference to the next); a regression stream may put many of its
frames in one batch. Per-stream order is guaranteed: gathering is exclusive and numbers the
batches, and post-processing follows those numbers (:mod:`~a2f_inference.pipeline.sequencer`).
Besides its own ``on_ready``, every session's own callback (given at ``open_stream``) is
called when it got frames or failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from a2f_inference.pipeline.batching import (
    BatchFill,
    BatchStats,
    SchedulerObserver,
    batch_feeds,
    merged,
    new_buffers,
    rows,
    views,
)
from a2f_inference.pipeline.completion import complete_items
from a2f_inference.pipeline.runtime import ModelRuntime, batch_axis
from a2f_inference.pipeline.sequencer import PostSequencer
from a2f_inference.pipeline.session import ReadyCallback, StreamSession, WorkItem
from a2f_volume.errors import UnavailableError

logger = logging.getLogger(__name__)

__all__ = ["BatchScheduler", "BatchStats", "ReadyCallback", "SchedulerObserver"]


@dataclass
class DoneBatch:
    """A batch after inference, waiting for post-processing."""

    items: list[WorkItem]
    parts: list[dict[str, np.ndarray]]
    t_start: float
    t_inf: float


class BatchScheduler:
    """Batches ready windows of every stream of one :class:`ModelRuntime`.

    ``max_batch``: windows per engine call (default: the runtime's, i.e. ``trt_info``
    ``MAX_BATCH_SIZE`` capped by the engine). ``max_wait_s``: how long a non-full batch
    waits for other streams' windows (only when other streams are open). ``on_ready``: called
    on the worker thread with each session that got frames or failed (the server wraps it in
    ``loop.call_soon_threadsafe``); each session's own ``on_ready`` is called as well.
    ``observer``: optional :class:`SchedulerObserver`.
    ``pipelined``: post-process on a second thread while the engine runs the next batch.
    That pays off when the engine leaves CPU idle (TensorRT on a GPU; the server, whose event
    loop and gaps between batches leave room); in a process that only runs batches with ONNX
    Runtime on every core it adds contention (measured on 2 cores), hence off by default here
    and on in the server (``--postprocess overlap``).
    ``workers``: inference threads running batches side by side; the engine must accept
    that many concurrent ``run`` calls (ONNX Runtime sessions do; TensorRT engines use one
    execution context per thread).
    """

    def __init__(self, runtime: ModelRuntime, *, max_batch: int | None = None,
                 max_wait_s: float = 0.002, on_ready: ReadyCallback | None = None,
                 observer: SchedulerObserver | None = None, pipelined: bool = False,
                 workers: int = 1) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s {max_wait_s} must be >= 0")
        if workers < 1:
            raise ValueError(f"workers {workers} must be >= 1")
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
        self.workers = int(workers)
        self._threads: list[threading.Thread] = []
        self.pipelined = pipelined
        # Gathering is exclusive (a stream's windows are taken in order) and numbers the
        # batches; the sequencer post-processes them in that order.
        self._gather_lock = threading.Lock()
        self._post: PostSequencer[DoneBatch] = PostSequencer(
            runtime.name, self._postprocess, pipelined=pipelined, ahead=self.workers + 1)
        self._count_lock = threading.Lock()
        self._busy = 0  # workers running a batch (inference, or inline post-processing)
        self._stopping = False
        self._stopped = False
        self.batches = 0
        self.windows = 0
        runtime.attach(self)

    @property
    def running(self) -> bool:
        return (any(t.is_alive() for t in self._threads) and not self._stopping)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (a stopped scheduler does not start again)."""
        return self._stopped

    def start(self) -> None:
        """Start the worker threads (idempotent) and pick up streams already open."""
        with self._cond:
            if self._threads or self._stopped:
                return
            self._threads = [
                threading.Thread(target=self._run, args=(i,), daemon=True,
                                 name=f"a2f-batch-{self.runtime.name}"
                                 + (f"-{i}" if self.workers > 1 else ""))
                for i in range(self.workers)]
            self._post.start(self.workers)
            for t in self._threads:
                t.start()
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
            threads = list(self._threads)
        deadline = time.monotonic() + max(0.0, grace_s)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            logger.warning("batch workers of %s still busy after %.1fs; abandoning the "
                           "remaining work", self.runtime.name, grace_s)
            self._post.abort()
        self._post.join(max(0.0, deadline - time.monotonic()) + 0.1)
        self.runtime.detach(self)
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
            if self.workers > 1:  # the one gathering must hear it, not only an idle one
                self._cond.notify_all()
            else:
                self._cond.notify()

    # -- worker --------------------------------------------------------------------------------
    def _run(self, index: int) -> None:
        logger.info("batch worker %d of %s started: max batch %d, max wait %.1f ms, %d "
                    "worker(s), %s", index, self.runtime.name, self.max_batch,
                    1000 * self.max_wait_s, self.workers,
                    "pipelined post-processing" if self.pipelined else "inline post-processing")
        buffers: dict[str, np.ndarray] | None = None  # this worker's batch inputs, reused
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if (not self._queue and self._stopping) or self._post.aborted:
                        break
                if not self._post.wait_turn():
                    break
                if buffers is None:
                    buffers = new_buffers(self.runtime.input_specs.values(), self.max_batch)
                with self._gather_lock:
                    try:
                        groups = self._gather(buffers)
                    except Exception:  # the worker must survive
                        logger.exception("batch worker of %s: gathering failed",
                                         self.runtime.name)
                        continue
                    if not groups:
                        continue
                    seq = self._post.take_number()
                    with self._count_lock:
                        self._busy += 1
                try:
                    try:
                        done = self._run_batch(groups, buffers)
                    except Exception:  # the worker must survive; streams already failed
                        logger.exception("batch worker of %s: unexpected error",
                                         self.runtime.name)
                        done = None
                    self._post.hand_over(seq, done)
                finally:
                    with self._count_lock:
                        self._busy -= 1
        finally:
            if self._post.worker_exited():
                logger.info("batch scheduler of %s stopped after %d batches (%d windows)",
                            self.runtime.name, self.batches, self.windows)

    def _gather(self, buffers: dict[str, np.ndarray]) -> list[list[WorkItem]]:
        """Ready windows for one batch: per stream (first come first), its items in order,
        written into ``buffers`` where the inputs allow it. Under the gather lock."""
        by_session: dict[StreamSession, list[WorkItem]] = {}
        total = 0
        fill = BatchFill(self.max_wait_s)
        limit = self._batch_limit()
        while True:
            while total < limit:
                with self._cond:
                    if not self._queue:
                        break
                    session = self._queue.popleft()
                    self._queued.discard(session)
                    waiting = len(self._queue)
                share = max(1, (limit - total) // (waiting + 1))
                try:
                    item = session.take_work(share, views(buffers, total, share))
                except Exception as err:  # this stream alone fails; the batch goes on
                    logger.exception("batch worker of %s: taking a stream's windows failed",
                                     self.runtime.name)
                    session.fail(err)
                    session.signal_ready()
                    continue
                if item is None:
                    continue
                item.batch_pos = total
                total += item.count
                by_session.setdefault(session, []).append(item)
                if item.count == share:  # may have more: back of the queue
                    self.submit(session)
            if not fill.wait_for_more(self._cond, self._queue, lambda: self._stopping,
                                      total=total, limit=limit, streams=len(by_session),
                                      open_streams=lambda: self.runtime.open_streams):
                break
        return list(by_session.values())

    def _batch_limit(self) -> int:
        """Windows this batch may take: ``max_batch``, or when other workers are idle, an
        even share of the windows ready now, so that the idle workers run the rest side by
        side instead of one worker running everything while they wait (one batch of 2B
        windows on one core takes as long as two batches of B on two)."""
        with self._count_lock:
            idle = self.workers - self._busy
        if idle <= 1:
            return self.max_batch
        with self._cond:
            queued = list(self._queue)
        ready = sum(s.ready_windows() for s in queued)
        return max(1, min(self.max_batch, -(-ready // idle)))

    def _run_batch(self, groups: list[list[WorkItem]], buffers: dict[str, np.ndarray]
                   ) -> DoneBatch | None:
        """Inference of one batch; the batch for post-processing (None if it failed)."""
        runtime = self.runtime
        t_start = time.perf_counter()
        # the batch holds the windows in the order they were taken (a stream may have taken
        # twice); from here on one item per stream, its output rows gathered from its parts
        flat = sorted((it for g in groups for it in g), key=lambda it: it.batch_pos)
        items = [g[0] if len(g) == 1 else merged(g) for g in groups]
        try:
            feeds = batch_feeds(runtime.input_specs, flat, buffers)
            outputs = runtime.engine.run(feeds)
        except Exception as err:  # reported to every stream of the batch
            logger.exception("inference on %s failed for a batch of %d windows", runtime.name,
                             sum(it.count for it in items))
            for it in items:
                it.session.fail(err)
                self._ready(it.session)
            return None
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
                pieces = [rows(arr, axes[name], starts[id(g)], g.count) for g in group]
                part[name] = (pieces[0] if len(pieces) == 1
                              else np.concatenate(pieces, axis=axes[name]))
            it.session.accept(it, part)
            parts.append(part)
        with self._count_lock:
            self.batches += 1
            self.windows += offset
        return DoneBatch(items, parts, t_start, t_inf)

    def _postprocess(self, done: DoneBatch) -> None:
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
                    inference_s=done.t_inf - done.t_start, postprocess_s=t_end - t0,
                    postprocess_wait_s=max(0.0, t0 - done.t_inf)))
            except Exception:  # metrics must not stop inference
                logger.exception("scheduler observer failed")

    def _ready(self, session: StreamSession) -> None:
        session.signal_ready()
        cb = self.on_ready
        if cb is None:
            return
        try:
            cb(session)
        except Exception:  # a listener must not stop the worker
            logger.exception("on_ready callback failed")
