"""The downloads of one pass: their progress (logged every few seconds) and waiting for all
downloads of a model, stopping the others at the first failure."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, wait

from a2f_model_sync.metrics import SyncMetrics
from a2f_model_sync.source import Downloaded, Interrupted, StopFlag

logger = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 5.0


class DownloadProgress:
    """Thread-safe byte counter that logs progress of large downloads every few seconds."""

    def __init__(self, total_bytes: int, total_objects: int, metrics: SyncMetrics) -> None:
        self.total = total_bytes
        self.objects_total = total_objects
        self.done = 0
        self.objects_done = 0
        self._metrics = metrics
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_log = self._start

    def add(self, n: int) -> None:
        self._metrics.bytes_downloaded.inc(n)
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last_log < _PROGRESS_EVERY_S:
                return
            self._last_log = now
            done, objs = self.done, self.objects_done
        rate = done / max(now - self._start, 1e-6)
        logger.info(
            "downloading: %.1f/%.1f MiB (%.0f%%), %d/%d objects, %.1f MiB/s",
            done / 2**20, self.total / 2**20, 100.0 * done / max(self.total, 1), objs,
            self.objects_total, rate / 2**20,
        )

    def object_done(self) -> None:
        with self._lock:
            self.objects_done += 1


def wait_all_or_first_error(futs: Iterable[Future[Downloaded]], stop: StopFlag) -> None:
    """Wait for all downloads of a model; on the first failure stop the others and re-raise
    that failure (not the Interrupted of the siblings it stopped)."""
    pending = set(futs)
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if not f.cancelled() and f.exception() is not None]
        if failed:
            stop.set()
            for f in pending:
                f.cancel()
            wait(pending)
            errors = [f.exception() for f in failed]
            real = [e for e in errors if not isinstance(e, Interrupted)]
            raise (real or errors)[0]  # type: ignore[misc]
