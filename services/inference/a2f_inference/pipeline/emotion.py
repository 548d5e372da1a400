"""Explicit emotions of a stream: client keyframes interpolated linearly at frame times.

Keyframes come as ``(time_code_s, {name: value})`` pairs, names from the 10 A2F emotions
(amazement, anger, cheekiness, disgust, fear, grief, joy, outofbreath, pain, sadness), values
in [0, 1]; a name missing from a keyframe is 0 in it. Between keyframes values are
interpolated linearly; before the first keyframe the first one holds, after the last the last
one holds. With no keyframes yet, the stream's starting emotion (``beginning_emotion``, else
the model's ``default_emotion``) applies. A keyframe at a time already present replaces it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from a2f_inference.pipeline.params import emotion_vector
from a2f_volume.errors import InvalidArgumentError

Keyframe = tuple[float, Mapping[str, float]]


def parse_keyframes(keyframes: Iterable[Keyframe]) -> list[tuple[float, np.ndarray]]:
    """Validate keyframes; returns (time, float32[10]) pairs in the given order."""
    out: list[tuple[float, np.ndarray]] = []
    for item in keyframes:
        try:
            t, values = item
        except (TypeError, ValueError) as err:
            raise InvalidArgumentError(
                f"emotion keyframe {item!r}: expected (time_code_s, {{emotion: value}})") from err
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise InvalidArgumentError(f"emotion keyframe time {t!r} is not a finite number")
        if t < 0:
            raise InvalidArgumentError(
                f"emotion keyframe time {t:g} s is negative; time codes count from the "
                "stream start (>= 0)")
        if not isinstance(values, Mapping):
            raise InvalidArgumentError(
                f"emotion keyframe at {t:g} s: expected a map of emotion name -> value, "
                f"got {type(values).__name__}")
        vec = emotion_vector("emotions", values)
        out.append((float(t), np.asarray(vec, dtype=np.float32)))
    return out


class EmotionTrack:
    """The explicit emotion curve of one stream (thread-safe).

    The keyframes are held as the interpolation tables themselves: a sorted float64 array of
    times and a float32 ``[n, 10]`` array of values, grown by doubling. :meth:`add` finds each
    new keyframe's place by binary search (O(log n) per keyframe) and merges a whole batch in
    one vectorised copy; keyframes later than the last one (the usual case) are appended in
    amortised O(1). :meth:`at` interpolates straight from the tables, so its cost does not
    grow with the number of keyframes beyond the binary search. Callers bound the count (the
    server caps keyframes per message and per stream before they reach the track).
    """

    def __init__(self, start: Sequence[float] | np.ndarray) -> None:
        self._start = np.asarray(start, dtype=np.float32).copy()
        self._n = 0
        self._times = np.empty(16, dtype=np.float64)
        self._values = np.empty((16, self._start.shape[0]), dtype=np.float32)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self._start.shape[0])

    def __len__(self) -> int:
        return self._n

    def add(self, keyframes: Iterable[Keyframe]) -> None:
        """Validate and merge keyframes (all or nothing); a later keyframe at a time already
        present replaces it."""
        parsed = parse_keyframes(keyframes)
        if not parsed:
            return
        # one keyframe per time within the batch, the last given wins
        batch: dict[float, np.ndarray] = {}
        for t, vec in parsed:
            batch[t] = vec
        times = np.fromiter(batch.keys(), dtype=np.float64, count=len(batch))
        values = np.stack(list(batch.values()))
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        with self._lock:
            self._merge(times, values)

    def _merge(self, times: np.ndarray, values: np.ndarray) -> None:
        n = self._n
        kt = self._times[:n]
        pos = np.searchsorted(kt, times)  # binary search per keyframe
        same = (pos < n) & (kt[np.minimum(pos, max(n - 1, 0))] == times) if n else \
            np.zeros(times.size, dtype=bool)
        new = ~same
        added = int(new.sum())
        if same.any():
            self._values[pos[same]] = values[same]
        if not added:
            return
        times, values, pos = times[new], values[new], pos[new]
        self._reserve(n + added)
        if pos[0] == n:  # all after the last keyframe: append
            self._times[n:n + added] = times
            self._values[n:n + added] = values
        else:
            self._times[:n + added] = np.insert(kt, pos, times)
            self._values[:n + added] = np.insert(self._values[:n], pos, values, axis=0)
        self._n = n + added

    def _reserve(self, need: int) -> None:
        cap = self._times.shape[0]
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        times = np.empty(cap, dtype=np.float64)
        values = np.empty((cap, self.size), dtype=np.float32)
        times[:self._n] = self._times[:self._n]
        values[:self._n] = self._values[:self._n]
        self._times, self._values = times, values

    def at(self, times_s: np.ndarray) -> np.ndarray:
        """Emotion values at each time: float32 [len(times_s), 10]."""
        times = np.asarray(times_s, dtype=np.float64).reshape(-1)
        with self._lock:
            n = self._n
            if n == 0:
                return np.broadcast_to(self._start, (times.size, self.size)).copy()
            kt = self._times[:n]
            kv = self._values[:n]
            if n == 1:
                return np.broadcast_to(kv[0], (times.size, self.size)).copy()
            # segment j spans kt[j]..kt[j+1]; outside the keyframes the end values hold
            j = np.clip(np.searchsorted(kt, times, side="right") - 1, 0, n - 2)
            t0, t1 = kt[j], kt[j + 1]
            w = np.clip((times - t0) / (t1 - t0), 0.0, 1.0)[:, None]
            v0 = kv[j].astype(np.float64)
            out = v0 + (kv[j + 1] - v0) * w
        return out.astype(np.float32)
