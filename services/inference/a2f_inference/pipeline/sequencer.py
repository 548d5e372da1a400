"""Post-processing in gathering order, for batches whose inference ends in any order.

Several inference workers run batches side by side; a stream's frames must still come out
in order. :class:`PostSequencer` numbers the batches as they are gathered (gathering is
exclusive), keeps the batches whose inference ended early until their turn, and
post-processes them in number order, either *inline* (the worker that finds the next batch
due post-processes it and every batch due after it) or *pipelined* (a thread of its own
post-processes while the workers run the next batches). At most ``ahead`` batches may be
gathered beyond the one post-processing waits for: back-pressure on the engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PostSequencer(Generic[T]):
    """Runs ``process(batch)`` for each numbered batch, in number order, exactly once.

    ``None`` handed over for a number means the batch failed and there is nothing to do.
    """

    def __init__(self, name: str, process: Callable[[T], None], *, pipelined: bool,
                 ahead: int) -> None:
        self.name = name
        self.pipelined = pipelined
        self._process = process
        self._ahead = ahead
        self._cond = threading.Condition()
        self._next_seq = 0  # number of the next batch gathered
        self._post_seq = 0  # number of the next batch to post-process
        self._done: dict[int, T | None] = {}
        self._posting = False  # a worker is post-processing (inline mode)
        self._workers_left = 0
        self._aborted = False
        self._thread: threading.Thread | None = None

    @property
    def aborted(self) -> bool:
        return self._aborted

    def start(self, workers: int) -> None:
        """``workers`` inference workers hand batches over; pipelined, start the thread."""
        self._workers_left = workers
        if self.pipelined:
            self._thread = threading.Thread(target=self._run, name=f"a2f-post-{self.name}",
                                            daemon=True)
            self._thread.start()

    def wait_turn(self) -> bool:
        """Back-pressure: wait while too many batches wait for post-processing (False when
        aborted)."""
        with self._cond:
            while self._next_seq - self._post_seq >= self._ahead and not self._aborted:
                self._cond.wait(0.5)
            return not self._aborted

    def take_number(self) -> int:
        """The number of the batch just gathered (call under the gathering lock)."""
        with self._cond:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def hand_over(self, seq: int, batch: T | None) -> None:
        """Batch ``seq``'s inference is over. Inline, the calling worker post-processes every
        batch that is due, its own and those other workers left waiting for it; pipelined,
        the post-processing thread does."""
        with self._cond:
            self._done[seq] = batch
            self._cond.notify_all()
            if self.pipelined or self._posting:
                return
            self._posting = True
        self._drain(inline=True)

    def worker_exited(self) -> bool:
        """An inference worker ended; True for the last one."""
        with self._cond:
            self._workers_left -= 1
            self._cond.notify_all()
            return self._workers_left == 0

    def abort(self) -> None:
        """Drop what is left: nothing more is post-processed, waiting workers go."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def join(self, timeout_s: float) -> None:
        """Wait for the post-processing thread (pipelined) to end."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _drain(self, inline: bool) -> None:
        """Post-process the batches that are due, in order. ``inline``: the caller holds the
        posting turn, given back when nothing is due (in the same critical section as that
        check, so a batch handed over meanwhile is never left behind)."""
        while True:
            with self._cond:
                if self._post_seq not in self._done:
                    if inline:
                        self._posting = False
                    return
                batch = self._done.pop(self._post_seq)
            try:
                if batch is not None:
                    self._process(batch)
            except Exception:  # the thread must survive; the streams already failed
                logger.exception("post-processing of %s: unexpected error", self.name)
            finally:
                with self._cond:
                    self._post_seq += 1
                    self._cond.notify_all()

    def _run(self) -> None:
        """Pipelined post-processing: batch after batch in gathering order, until every
        worker has stopped and nothing is left (or the sequencer aborts)."""
        while True:
            with self._cond:
                while (self._post_seq not in self._done and not self._aborted
                       and self._workers_left > 0):
                    self._cond.wait()
                if self._post_seq not in self._done:
                    return
            self._drain(inline=False)
