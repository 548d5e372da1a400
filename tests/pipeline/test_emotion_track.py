"""The emotion track: sorted merge, replacement, interpolation from the kept tables."""

from __future__ import annotations

import numpy as np
import pytest

from a2f_inference.pipeline.emotion import EmotionTrack
from a2f_volume.errors import InvalidArgumentError


def _reference(keys: dict[float, float], times: np.ndarray) -> np.ndarray:
    kt = np.array(sorted(keys))
    return np.interp(times, kt, [keys[t] for t in kt])


def test_any_order_matches_linear_interpolation() -> None:
    rng = np.random.default_rng(3)
    times = rng.permutation(np.arange(0.0, 50.0, 0.5))
    keys = {float(t): float(rng.uniform()) for t in times}
    track = EmotionTrack(np.zeros(10))
    items = list(keys.items())
    for start in range(0, len(items), 7):  # batches in random order
        track.add([(t, {"joy": v}) for t, v in items[start:start + 7]])
    assert len(track) == len(keys)
    q = np.linspace(-1.0, 52.0, 400)
    got = track.at(q)
    joy = 6  # amazement anger cheekiness disgust fear grief joy ...
    np.testing.assert_allclose(got[:, joy], _reference(keys, q), atol=1e-6)
    assert np.all(got[:, :joy] == 0) and np.all(got[:, joy + 1:] == 0)


def test_same_time_replaces_and_last_in_a_batch_wins() -> None:
    track = EmotionTrack(np.full(10, 0.5))
    np.testing.assert_allclose(track.at(np.array([3.0]))[0], 0.5)  # start emotion
    track.add([(1.0, {"joy": 0.2}), (2.0, {"joy": 0.4}), (1.0, {"joy": 0.9})])
    track.add([(2.0, {"anger": 1.0})])
    assert len(track) == 2
    v = track.at(np.array([1.0, 2.0]))
    assert v[0, 6] == pytest.approx(0.9) and v[1, 6] == 0 and v[1, 1] == 1


def test_descending_keyframes_stay_sorted_and_bad_batch_adds_nothing() -> None:
    track = EmotionTrack(np.zeros(10))
    for t in range(3000, 0, -1):  # the worst order: each before all others
        track.add([(float(t), {"fear": t / 3000})])
    q = np.array([1.0, 1500.5, 3000.0])
    np.testing.assert_allclose(track.at(q)[:, 4], q / 3000, atol=1e-6)
    with pytest.raises(InvalidArgumentError):
        track.add([(5000.0, {"joy": 0.1}), (5001.0, {"nonsense": 1.0})])
    assert len(track) == 3000
