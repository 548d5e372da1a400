"""A2E windows: centred on frames, zero-padded, input strength, every N frames."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from a2f_inference.pipeline.a2e_window import A2EClock


def _clock(interval: int = 10) -> A2EClock:
    # 100 samples/s and 10 fps: frame k sits at sample 10 k; T = 8 -> [10k - 4, 10k + 4)
    return A2EClock.create(100, 8, 10, interval)


def test_windows_are_centred_zero_padded_and_scaled() -> None:
    audio = np.arange(1, 21, dtype=np.float32)  # 20 samples: 1..20
    got = _clock().windows(audio, [0, 1, 2], input_strength=2.0)
    np.testing.assert_array_equal(got[0], 2 * np.array([0, 0, 0, 0, 1, 2, 3, 4]))
    np.testing.assert_array_equal(got[1], 2 * np.arange(7, 15))
    np.testing.assert_array_equal(got[2], 2 * np.array([17, 18, 19, 20, 0, 0, 0, 0]))
    assert got.dtype == np.float32 and got.shape == (3, 8)


def test_rounding_at_fractional_frame_times() -> None:
    c = A2EClock.create(16000, 60000, 29.97)
    assert c.fps == Fraction(2997, 100)
    # frame 1 at 533.87 samples -> centre 534
    assert c.window_start(1) == 534 - 30000
    assert c.half == 30000 and c.lookahead_s == pytest.approx(1.875)


def test_a2e_runs_every_interval_frames() -> None:
    c = _clock(3)
    assert [k for k in range(8) if c.runs_a2e(k)] == [0, 3, 6]
    assert c.inference_frames(1, 10) == [3, 6, 9]
    assert c.inference_frames(3, 4) == [3]
    assert c.inference_frames(4, 6) == []


def test_frames_wait_for_their_look_ahead_until_the_stream_ends() -> None:
    c = _clock()
    assert c.frames_ready(3) == 0  # frame 0 needs samples up to 4
    assert c.frames_ready(4) == 1
    assert c.frames_ready(20) == 2  # frame 2 (window end 24) not yet
    assert c.frames_ready(24) == 3
    assert c.frames_ready(20, ended=True) == 2  # frames at 0 and 10 exist in 20 samples
    assert c.frames_ready(21, ended=True) == 3


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="inference_interval"):
        A2EClock.create(16000, 60000, 30, 0)
    with pytest.raises(ValueError, match="window_samples"):
        A2EClock.create(16000, 1, 30)
