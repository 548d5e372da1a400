"""Frame counts, time codes, windows, audio slices and feeding patterns (real ORT, small
stand-ins)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from a2f_inference.audio import speech_like, to_pcm16
from a2f_inference.pipeline import Frame, run_offline
from a2f_inference.pipeline.frames import DiffusionClock, RegressionClock, as_fraction

from .conftest import RuntimeFactory

DURATIONS_S = [0.05, 0.26, 0.5, 1.0, 2.345]


def expected_count(n16: int, fps: float) -> int:
    """Frames k with k * 16000 / fps < n16, counted one by one."""
    k = 0
    while k * 16000 / fps < n16 - 1e-9:
        k += 1
    return k


def check_time_codes(frames: list[Frame], fps: float) -> None:
    assert [f.index for f in frames] == list(range(len(frames)))
    for f in frames:
        assert f.time_code_s == pytest.approx(f.index / fps, abs=1e-9)
        assert f.weights.shape == (68,) and f.weights.dtype == np.float32
        assert np.all(np.isfinite(f.weights))


@pytest.mark.parametrize("seconds", DURATIONS_S)
@pytest.mark.parametrize("fps", [30.0, 24.0, 29.97])
def test_regression_frame_count_and_time_codes(make_runtime: RuntimeFactory, seconds: float,
                                               fps: float) -> None:
    rt = make_runtime("regression")
    n = round(seconds * 16000)
    frames = run_offline(rt, to_pcm16(speech_like(seconds)), 16000, output_fps=fps)
    assert len(frames) == expected_count(n, fps)
    check_time_codes(frames, fps)


@pytest.mark.parametrize("seconds", DURATIONS_S)
@pytest.mark.parametrize("fps", [60.0, 30.0, 24.0])
def test_diffusion_frame_count_and_time_codes(make_runtime: RuntimeFactory, seconds: float,
                                              fps: float) -> None:
    rt = make_runtime("diffusion", record=True)
    n = round(seconds * 16000)
    frames = run_offline(rt, to_pcm16(speech_like(seconds)), 16000, output_fps=fps,
                         constant_noise=True, seed=3)
    assert len(frames) == expected_count(n, fps)
    check_time_codes(frames, fps)
    # inferences: enough to cover the last 60 fps frame -- (g_last + 45) // 30 + 1
    g_last = expected_count(n, 60.0) - 1
    assert len(rt.engine.calls) == (g_last + 45) // 30 + 1  # type: ignore[attr-defined]


def test_regression_windows_are_the_reference_windows(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("regression", record=True)
    a = rt.folder.audio
    strength = rt.folder.identities[0].config["input_strength"]
    x = speech_like(0.7, seed=5)
    pcm = to_pcm16(x)
    signal = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    frames = run_offline(rt, pcm, 16000, output_fps=30.0)
    fed = np.concatenate([c[0]["input"][:, 0, :] for c in rt.engine.calls])  # type: ignore[attr-defined]
    assert fed.shape == (len(frames), a.buffer_len)
    padded = np.concatenate([np.zeros(a.buffer_len), signal, np.zeros(a.buffer_len)])
    for k in range(len(frames)):
        t = round(k * 16000 / 30)
        start = t - a.buffer_ofs + a.buffer_len  # index into padded
        want = padded[start : start + a.buffer_len] * strength
        np.testing.assert_allclose(fed[k], want, rtol=1e-6, atol=1e-7)
    emo = np.concatenate([c[0]["emotion"][:, 0, :] for c in rt.engine.calls])  # type: ignore[attr-defined]
    assert rt.folder.regression is not None
    implicit = rt.folder.regression.implicit_emotion
    np.testing.assert_allclose(emo[:, : implicit.size],
                               np.broadcast_to(implicit, (len(frames), implicit.size)))
    np.testing.assert_array_equal(emo[:, implicit.size :], 0.0)  # default emotion: zeros


def test_diffusion_windows_latents_and_noise(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("diffusion", record=True)
    a = rt.folder.audio
    x = speech_like(1.6, seed=6)
    pcm = to_pcm16(x)
    signal = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    strength = rt.folder.identities[0].config["input_strength"]
    run_offline(rt, pcm, 16000, output_fps=60.0, constant_noise=True, seed=11)
    calls = rt.engine.calls  # type: ignore[attr-defined]
    padded = np.concatenate([np.zeros(a.padding_left), signal, np.zeros(3 * a.buffer_len)])
    for k, (feeds, _out) in enumerate(calls):
        start = k * 8000  # -padding_left + k * stride, shifted by the left padding
        want = padded[start : start + a.buffer_len] * strength
        np.testing.assert_allclose(feeds["window"][0], want, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(feeds["identity"][0], [1.0, 0.0, 0.0])
        if k == 0:
            np.testing.assert_array_equal(feeds["input_latents"], 0.0)
        else:  # the GRU state is carried from the previous inference of the stream
            np.testing.assert_array_equal(feeds["input_latents"], calls[k - 1][1]["output_latents"])
        # constant noise: the same noise every inference
        np.testing.assert_array_equal(feeds["noise"], calls[0][0]["noise"])
    assert calls[0][0]["noise"].std() == pytest.approx(1.0, abs=0.05)


def test_diffusion_fresh_noise_each_inference_by_default(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("diffusion", record=True)
    run_offline(rt, to_pcm16(speech_like(1.2)), 16000, seed=1)
    calls = rt.engine.calls  # type: ignore[attr-defined]
    assert len(calls) >= 3
    firsts = {float(c[0]["noise"].flat[0]) for c in calls}
    assert len(firsts) == len(calls)  # a new draw for every inference
    for c in calls:
        assert abs(float(c[0]["noise"].mean())) < 0.05
        assert float(c[0]["noise"].std()) == pytest.approx(1.0, abs=0.05)


def test_diffusion_30fps_is_every_second_60fps_frame(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("diffusion")
    pcm = to_pcm16(speech_like(2.1, seed=2))
    f60 = run_offline(rt, pcm, 16000, output_fps=60.0, constant_noise=True, seed=4)
    f30 = run_offline(rt, pcm, 16000, output_fps=30.0, constant_noise=True, seed=4)
    assert len(f30) == math.ceil(len(f60) / 2)
    for f in f30:
        np.testing.assert_array_equal(f.weights, f60[2 * f.index].weights)
    # 24 fps: linear interpolation of the 60 fps weights at i / 24 s
    f24 = run_offline(rt, pcm, 16000, output_fps=24.0, constant_noise=True, seed=4)
    w60 = np.stack([f.weights for f in f60])
    t60 = np.arange(len(f60)) / 60.0
    for f in f24:
        want = [np.interp(f.time_code_s, t60, w60[:, c]) for c in range(68)]
        np.testing.assert_allclose(f.weights, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_audio_slices_tile_the_input(make_runtime: RuntimeFactory, kind: str, rate: int) -> None:
    rt = make_runtime(kind)
    pcm = to_pcm16(speech_like(1.37, rate=rate, seed=8))
    rng = np.random.default_rng(rate)
    frames: list[Frame] = []
    session = rt.open_stream(None, None, input_rate=rate, constant_noise=True, seed=0)
    from a2f_inference.pipeline import BatchScheduler

    sched = BatchScheduler(rt)
    sched.start()
    try:
        pos = 0
        while pos < len(pcm):
            step = int(rng.integers(1, 9000))
            session.push_audio(pcm[pos : pos + step])
            pos += step
            frames += session.take_frames()
        session.end_of_audio()
        while not session.done:
            session.wait(5.0)
            frames += session.take_frames()
    finally:
        session.close()
        sched.stop()
    assert b"".join(f.audio for f in frames) == pcm
    assert all(len(f.audio) % 2 == 0 for f in frames)
    # each slice covers [round(k * rate / fps), round((k + 1) * rate / fps)) except the last
    for f in frames[:-1]:
        assert len(f.audio) // 2 in (math.floor(rate / 30), math.ceil(rate / 30))


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_chunked_feed_gives_identical_frames(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = make_runtime(kind)
    pcm = to_pcm16(speech_like(1.9, seed=9))
    whole = run_offline(rt, pcm, 16000, constant_noise=True, seed=7)
    for chunk in (1, 333, 4161, 7):
        if chunk == 1 and kind == "diffusion":
            continue  # byte-by-byte costs time and adds nothing over 7
        parts = run_offline(rt, pcm, 16000, constant_noise=True, seed=7, chunk_bytes=chunk)
        assert len(parts) == len(whole)
        for a, b in zip(whole, parts, strict=True):
            # the same windows in differently sized batches: only GEMM rounding may differ
            np.testing.assert_allclose(a.weights, b.weights, rtol=1e-5, atol=1e-7)
            assert a.audio == b.audio and a.time_code_s == b.time_code_s


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
@pytest.mark.parametrize("rate", [44100, 48000])
def test_resampled_input_gives_the_same_animation(make_runtime: RuntimeFactory, kind: str,
                                                  rate: int) -> None:
    rt = make_runtime(kind)
    ref = run_offline(rt, to_pcm16(speech_like(1.5, 16000, seed=4)), 16000,
                      constant_noise=True, seed=2)
    # the same synthetic voice, generated at the other rate
    other = run_offline(rt, to_pcm16(speech_like(1.5, rate, seed=4)), rate,
                        constant_noise=True, seed=2)
    assert len(other) == len(ref)
    w_ref = np.stack([f.weights for f in ref])
    w_other = np.stack([f.weights for f in other])
    scale = max(float(np.abs(w_ref).max()), 1e-3)
    assert float(np.abs(w_other - w_ref).max()) < 0.05 * scale + 0.01


def test_clocks_match_the_reference_numbers() -> None:
    d = DiffusionClock(16000, 16000, 16000, 15, 30, 15)
    assert d.native_fps == 60 and d.stride == 8000 and d.warmup == 45
    # frame j of inference k sits at sample -12000 + 8000 k + j * 266.67
    for k in range(4):
        for j in (0, 29):
            g = d.first_native(k) + j
            assert g * 16000 / 60 == pytest.approx(-12000 + 8000 * k + j * 16000 / 60)
    assert d.lookahead_s == pytest.approx(0.75)
    r = RegressionClock(16000, 8320, 4160, as_fraction(30.0))
    assert r.lookahead_s == pytest.approx(0.26)
    # frame k needs t_k + 4160 samples
    assert r.frames_ready(4159) == 0 and r.frames_ready(4160) == 1
    # t_1 = 533.33 -> sample 533: its window ends at 533 + 4160
    assert r.frames_ready(4160 + 532) == 1 and r.frames_ready(4160 + 533) == 2
