"""The audio a stream holds: a growing signal that forgets what no window needs any more."""

from __future__ import annotations

import numpy as np


class SampleBuffer:
    """A growing 1-D float32 signal that forgets what no window needs any more.

    Held samples are ``_buf[_off : _off + _len]``; forgetting only moves ``_off``, and the
    buffer is compacted when an append needs the room (each sample is moved at most a few
    times, whatever the chunk sizes)."""

    def __init__(self) -> None:
        self._buf = np.zeros(1 << 15, dtype=np.float32)
        self._off = 0  # position of the first held sample in _buf
        self._base = 0  # absolute index of the first held sample
        self._len = 0  # held samples
        self.total = 0  # samples appended so far

    def append(self, x: np.ndarray) -> None:
        n = x.size
        if n == 0:
            return
        if self._off + self._len + n > self._buf.size:
            held = self._buf[self._off : self._off + self._len]
            if self._len + n > self._buf.size // 2:  # grow
                new = np.zeros(max(2 * self._buf.size, 2 * (self._len + n)), dtype=np.float32)
                new[: self._len] = held
                self._buf = new
            else:  # compact in place
                self._buf[: self._len] = held
            self._off = 0
        end = self._off + self._len
        self._buf[end : end + n] = x
        self._len += n
        self.total += n

    def window(self, start: int, length: int, out: np.ndarray) -> None:
        """Copy [start, start + length) into ``out`` (zeros outside what is held)."""
        lo = max(start, self._base)
        hi = min(start + length, self._base + self._len)
        if hi <= lo:
            out[...] = 0.0
            return
        if lo > start:
            out[: lo - start] = 0.0
        if hi < start + length:
            out[hi - start :] = 0.0
        src = self._off + lo - self._base
        out[lo - start : hi - start] = self._buf[src : src + hi - lo]

    def windows(self, starts: np.ndarray, length: int, out: np.ndarray | None = None
                ) -> np.ndarray:
        """``[len(starts), length]`` windows (ascending starts), zero-padded like
        :meth:`window`; written into ``out`` when given."""
        lo = int(starts[0])
        hi = int(starts[-1]) + length
        if lo >= self._base and hi <= self._base + self._len:  # all held: no staging copy
            seg = self._buf[self._off + lo - self._base : self._off + hi - self._base]
        else:
            seg = np.empty(hi - lo, dtype=np.float32)
            self.window(lo, seg.size, seg)
        if out is None:
            out = np.empty((len(starts), length), dtype=np.float32)
        for row, start in zip(out, (starts - lo).tolist(), strict=True):
            row[:] = seg[start : start + length]  # plain slice copies: the fastest way here
        return out

    def discard_before(self, pos: int) -> None:
        drop = min(pos - self._base, self._len)
        if drop <= 0:
            return
        self._off += drop
        self._len -= drop
        self._base += drop
