"""The cross-stream batch scheduler of one Audio2Emotion version.

:class:`A2EScheduler` is the A2E counterpart of
:class:`~a2f_inference.pipeline.scheduler.BatchScheduler`, with the same seams: streams tell
it when they have ready windows (:meth:`A2EScheduler.submit`, called by the stream itself
through its :class:`~a2f_inference.pipeline.a2e_runtime.EmotionRuntime`); its worker thread
gathers the ready windows of every such stream, round-robin, into one batch of at most
``max_batch`` windows (``trt_info`` ``MAX_BATCH_SIZE``, 128 in NVIDIA's profile), waiting at
most ``max_wait_s`` for other streams once it has some, runs the engine once, hands each
stream its logits (the stream post-processes the frames they complete) and calls each
stream's own completion callback. A2E windows are small (one [T] row, a few ms each on a
CPU), so one worker serves every stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np

from a2f_inference.pipeline.a2e_runtime import A2EStream, EmotionRuntime
from a2f_inference.pipeline.a2e_track import advance_tracks
from a2f_inference.pipeline.batching import BatchFill, BatchStats, SchedulerObserver
from a2f_volume.errors import UnavailableError

logger = logging.getLogger(__name__)


class A2EScheduler:
    """Batches the ready A2E windows of every stream of one :class:`EmotionRuntime`."""

    def __init__(self, runtime: EmotionRuntime, *, max_batch: int | None = None,
                 max_wait_s: float = 0.002, observer: SchedulerObserver | None = None) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s {max_wait_s} must be >= 0")
        self.runtime = runtime
        self.max_batch = (runtime.max_batch if max_batch is None
                          else max(1, min(int(max_batch), runtime.max_batch)))
        self.max_wait_s = float(max_wait_s)
        self.observer = observer
        self._cond = threading.Condition()
        self._queue: deque[A2EStream] = deque()
        self._queued: set[A2EStream] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        #: Batches run, windows run, and the most streams one batch held (scheduler stats).
        self.batches = 0
        self.windows = 0
        self.max_streams_per_batch = 0
        runtime.attach(self)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def stopped(self) -> bool:
        return self._stopped

    def start(self) -> None:
        """Start the worker (idempotent) and pick up streams already open."""
        with self._cond:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"a2e-batch-{self.runtime.name}")
            self._thread.start()
        for s in self.runtime.streams():
            self.submit(s)

    def stop(self, grace_s: float = 5.0) -> None:
        """Finish the queued work for up to ``grace_s``, then stop (idempotent); streams
        still waiting for emotions fail with :class:`UnavailableError`."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, grace_s))
            if thread.is_alive():
                logger.warning("A2E worker of %s still busy after %.1fs; abandoning it",
                               self.runtime.name, grace_s)
        self.runtime.detach(self)
        err = UnavailableError(f"Audio2Emotion model {self.runtime.name!r} was unloaded; "
                               "reopen the stream")
        for s in self.runtime.streams():
            if not s.track.finished and s.error is None:
                s.fail(err)
                s.signal_ready()

    def submit(self, stream: A2EStream) -> None:
        """``stream`` may have ready windows (called by the stream; any thread)."""
        with self._cond:
            if stream in self._queued:
                return
            self._queued.add(stream)
            self._queue.append(stream)
            self._cond.notify()

    # -- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        logger.info("A2E batch worker of %s started: max batch %d, max wait %.1f ms, "
                    "inference every %d frames", self.runtime.name, self.max_batch,
                    1000 * self.max_wait_s, self.runtime.inference_interval)
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue and self._stopping:
                    break
            try:
                batch = self._gather()
                if batch:
                    self._run_batch(batch)
            except Exception:  # the worker must survive
                logger.exception("A2E batch worker of %s: unexpected error", self.runtime.name)
        logger.info("A2E scheduler of %s stopped after %d batches (%d windows)",
                    self.runtime.name, self.batches, self.windows)

    def _gather(self) -> list[tuple[A2EStream, list[int], np.ndarray, float]]:
        """Ready windows of one batch: (stream, frames, windows, ready_at) per stream."""
        parts: dict[A2EStream, tuple[list[int], list[np.ndarray], float]] = {}
        total = 0
        fill = BatchFill(self.max_wait_s)
        while True:
            while total < self.max_batch:
                with self._cond:
                    if not self._queue:
                        break
                    stream = self._queue.popleft()
                    self._queued.discard(stream)
                    waiting = len(self._queue)
                share = max(1, (self.max_batch - total) // (waiting + 1))
                ready_at = stream.ready_at or time.perf_counter()
                frames, windows = stream.take_windows(share)
                if not frames:
                    continue
                got = parts.setdefault(stream, ([], [], ready_at))
                got[0].extend(frames)
                got[1].append(windows)
                total += len(frames)
                if len(frames) == share:  # may have more: back of the queue
                    self.submit(stream)
            if not fill.wait_for_more(self._cond, self._queue, lambda: self._stopping,
                                      total=total, limit=self.max_batch, streams=len(parts),
                                      open_streams=lambda: self.runtime.open_streams):
                break
        return [(s, f, w[0] if len(w) == 1 else np.concatenate(w), r)
                for s, (f, w, r) in parts.items()]

    def _run_batch(self, batch: list[tuple[A2EStream, list[int], np.ndarray, float]]) -> None:
        rt = self.runtime
        t0 = time.perf_counter()
        windows = batch[0][2] if len(batch) == 1 else np.concatenate([b[2] for b in batch])
        try:
            out = rt.engine.run({rt.input_name: np.ascontiguousarray(windows,
                                                                     dtype=np.float32)})
            logits = np.asarray(out[rt.output_name], dtype=np.float32)
            if logits.shape[0] != windows.shape[0]:
                raise ValueError(f"{logits.shape[0]} logit rows for {windows.shape[0]} "
                                 "windows")
        except Exception as err:  # reported to every stream of the batch
            logger.exception("A2E inference on %s failed for a batch of %d windows", rt.name,
                             windows.shape[0])
            for stream, *_ in batch:
                stream.fail(err)
                stream.signal_ready()
            return
        t_inf = time.perf_counter()
        row = 0
        for stream, frames, _w, _r in batch:
            stream.accept_logits(frames, logits[row:row + len(frames)])
            row += len(frames)
        try:  # the frames these logits complete, all streams of the batch together
            advance_tracks([s.track for s, *_ in batch if not s.closed])
        except Exception as err:  # not attributable to one stream: all of them stop
            logger.exception("A2E post-processing on %s failed", rt.name)
            for stream, *_ in batch:
                stream.fail(err)
        t_end = time.perf_counter()
        self.batches += 1
        self.windows += row
        self.max_streams_per_batch = max(self.max_streams_per_batch, len(batch))
        for stream, *_ in batch:
            stream.signal_ready()
        if self.observer is not None:
            try:
                self.observer.on_batch(BatchStats(
                    size=row, streams=len(batch),
                    queue_wait_s=tuple(max(0.0, t0 - r) for *_x, r in batch),
                    inference_s=t_inf - t0, postprocess_s=t_end - t_inf))
            except Exception:  # metrics must not stop inference
                logger.exception("A2E scheduler observer failed")
