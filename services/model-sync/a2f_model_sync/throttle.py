"""A shared download bandwidth limit (token bucket)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """A shared token bucket: ``take(n)`` sleeps so that the total rate stays at the limit."""

    def __init__(self, bytes_per_s: int) -> None:
        self.rate = bytes_per_s
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
        delay = start - now
        if delay > 0:
            time.sleep(delay)

