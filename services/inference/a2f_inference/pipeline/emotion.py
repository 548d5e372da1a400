"""Explicit emotions of a stream: client keyframes interpolated linearly at frame times.

Keyframes come as ``(time_code_s, {name: value})`` pairs, names from the 10 A2F emotions
(amazement, anger, cheekiness, disgust, fear, grief, joy, outofbreath, pain, sadness), values
in [0, 1]; a name missing from a keyframe is 0 in it. Between keyframes values are
interpolated linearly; before the first keyframe the first one holds, after the last the last
one holds. With no keyframes yet, the stream's starting emotion (``beginning_emotion``, else
the model's ``default_emotion``) applies. A keyframe at a time already present replaces it.
"""

from __future__ import annotations

import bisect
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
    """The explicit emotion curve of one stream (thread-safe)."""

    def __init__(self, start: Sequence[float] | np.ndarray) -> None:
        self._start = np.asarray(start, dtype=np.float32).copy()
        self._times: list[float] = []
        self._values: list[np.ndarray] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self._start.shape[0])

    def add(self, keyframes: Iterable[Keyframe]) -> None:
        """Validate and merge keyframes (all or nothing)."""
        parsed = parse_keyframes(keyframes)
        with self._lock:
            for t, vec in parsed:
                i = bisect.bisect_left(self._times, t)
                if i < len(self._times) and self._times[i] == t:
                    self._values[i] = vec
                else:
                    self._times.insert(i, t)
                    self._values.insert(i, vec)

    def at(self, times_s: np.ndarray) -> np.ndarray:
        """Emotion values at each time: float32 [len(times_s), 10]."""
        times = np.asarray(times_s, dtype=np.float64).reshape(-1)
        with self._lock:
            if not self._times:
                return np.broadcast_to(self._start, (times.size, self.size)).copy()
            kt = np.asarray(self._times, dtype=np.float64)
            kv = np.stack(self._values)
        out = np.empty((times.size, self.size), dtype=np.float32)
        for c in range(self.size):
            out[:, c] = np.interp(times, kt, kv[:, c])
        return out
