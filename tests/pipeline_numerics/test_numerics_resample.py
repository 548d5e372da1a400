"""Streaming resampler: chunking invariance, exact counts, frequency, amplitude, aliasing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import firwin, resample_poly

from a2f_inference.pipeline.resample import (
    HALF_LEN_FACTOR,
    KAISER_BETA,
    StreamingResampler,
    resample,
)
from a2f_volume.errors import InvalidArgumentError


def _chunked(x: np.ndarray, rate: int, sizes: list[int]) -> np.ndarray:
    r = StreamingResampler(rate)
    out, i, k = [], 0, 0
    while i < x.size:
        n = sizes[k % len(sizes)]
        out.append(r.process(x[i : i + n]))
        i += n
        k += 1
    out.append(r.flush())
    assert r.samples_out == r.expected_total_out
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [22050, 44100, 48000, 16001, 96000, 144000])
def test_chunked_equals_whole_signal_and_counts_are_exact(rate: int) -> None:
    rng = np.random.default_rng(rate)
    n = rate // 2 + 37
    x = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    whole = resample(x, rate)
    assert whole.size == round(n * 16000 / rate)
    for sizes in ([1, 2, 3, 500], [4096], [n]):
        chunked = _chunked(x, rate, sizes)
        assert chunked.size == whole.size
        assert np.abs(chunked - whole).max() < 1e-6


@pytest.mark.parametrize("rate", [44100, 48000])
def test_matches_resample_poly_with_the_same_window_and_has_no_delay(rate: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, rate).astype(np.float32)
    ours = resample(x, rate)
    g = np.gcd(rate, 16000)
    up, down = 16000 // g, rate // g
    half = HALF_LEN_FACTOR * max(up, down)
    h = firwin(2 * half + 1, 1.0 / max(up, down), window=("kaiser", KAISER_BETA))
    ref = resample_poly(x.astype(np.float64), up, down, window=h)
    n = min(ours.size, ref.size)
    assert np.abs(ours[:n] - ref[:n]).max() < 1e-5


@pytest.mark.parametrize("rate", [44100, 48000])
def test_sine_keeps_frequency_amplitude_and_phase(rate: int) -> None:
    t = np.arange(rate * 2) / rate
    x = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    y = resample(x, rate).astype(np.float64)
    t_out = np.arange(y.size) / 16000.0
    mid = slice(1600, y.size - 1600)  # away from the zero-padded ends
    expected = 0.5 * np.sin(2 * np.pi * 440.0 * t_out)
    assert np.abs(y[mid] - expected[mid]).max() < 2e-3  # same frequency, amplitude, timing
    spec = np.abs(np.fft.rfft(y[mid] * np.hanning(y[mid].size)))
    freqs = np.fft.rfftfreq(y[mid].size, 1 / 16000.0)
    assert abs(freqs[int(np.argmax(spec))] - 440.0) < 1.0


def test_10khz_tone_at_48k_is_attenuated_by_more_than_60_db() -> None:
    rate = 48000
    t = np.arange(rate) / rate
    x = (0.9 * np.sin(2 * np.pi * 10000.0 * t)).astype(np.float32)  # aliases to 6 kHz
    y = resample(x, rate).astype(np.float64)
    mid = y[800:-800]
    ratio_db = 20 * np.log10(np.sqrt(np.mean(mid**2)) / (0.9 / np.sqrt(2)))
    assert ratio_db < -60.0, ratio_db
    # a 5 kHz tone (in band) passes
    x5 = (0.9 * np.sin(2 * np.pi * 5000.0 * t)).astype(np.float32)
    y5 = resample(x5, rate)[800:-800].astype(np.float64)
    assert abs(20 * np.log10(np.sqrt(np.mean(y5**2)) / (0.9 / np.sqrt(2)))) < 0.1


def test_16k_is_identity() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 1234).astype(np.float32)
    r = StreamingResampler(16000)
    y = np.concatenate([r.process(x[:100]), r.process(x[100:]), r.flush()])
    assert np.array_equal(y, x)


def test_latency_is_a_few_output_samples() -> None:
    r = StreamingResampler(48000)
    got = r.process(np.zeros(4800, dtype=np.float32))
    assert 1600 - 14 <= got.size <= 1600


@pytest.mark.parametrize("rate", [8000, 15999, 144001, 0, -16000])
def test_unsupported_rates_are_rejected_naming_the_range(rate: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"16000\.\.144000"):
        StreamingResampler(rate)


def test_non_integer_rate_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"16000\.\.144000"):
        StreamingResampler(44100.5)  # type: ignore[arg-type]
