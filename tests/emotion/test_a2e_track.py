"""One stream's A2E track: streamed in pieces it gives exactly what the whole clip gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from a2f_inference.audio import synthetic_speech
from a2f_inference.pipeline.a2e_postprocess import A2EPostParams, A2EStreamState, step_stream
from a2f_inference.pipeline.a2e_track import A2EStreamTrack
from a2f_inference.pipeline.a2e_window import A2EClock
from a2f_volume.emotion_folder import load_emotion_folder
from a2f_volume.model_folder import EMOTIONS

FPS = 30
Setup = tuple[A2EClock, A2EPostParams, ort.InferenceSession, np.ndarray]


@pytest.fixture
def setup(a2e_folder: Path) -> Setup:
    folder = load_emotion_folder(a2e_folder)
    clock = A2EClock.create(folder.samplerate, folder.window_samples, FPS)
    session = ort.InferenceSession(str(folder.onnx_path), providers=["CPUExecutionProvider"])
    pcm = np.frombuffer(synthetic_speech(6.0, seed=4), dtype="<i2").astype(np.float32) / 32768
    return clock, A2EPostParams.resolve(folder.post), session, pcm


def _joy_after_2s(t: float) -> np.ndarray | None:
    if t < 2.0:
        return None
    v = np.zeros(len(EMOTIONS), dtype=np.float32)
    v[EMOTIONS.index("joy")] = 1.0
    return v


def _logits(session: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    out: np.ndarray = session.run(["output"], {"input_values": windows})[0]
    return out


def test_streamed_in_pieces_equals_the_whole_clip(setup: Setup) -> None:
    clock, params, session, pcm = setup
    # reference: every window from the whole clip, frames post-processed in order
    n = clock.frames_ready(pcm.size, ended=True)
    runs = clock.inference_frames(0, n)
    logits = _logits(session, clock.windows(pcm, runs, 1.3))
    ref_state = A2EStreamState(params)
    want = [step_stream(ref_state, logits[k // 10], _joy_after_2s(k / FPS)) for k in range(n)]

    track = A2EStreamTrack(clock, params, input_strength=1.3, preferred=_joy_after_2s)
    rng = np.random.default_rng(0)
    pos = 0
    got_a2e: list[np.ndarray] = []
    got_smoothed: list[np.ndarray] = []
    while pos < pcm.size:
        step = int(rng.integers(1, 9000))
        track.push_audio(pcm[pos:pos + step])
        pos += step
        if pos >= pcm.size:
            track.end()
        frames, windows = track.take_windows(max_count=3)
        while frames:
            assert track.retained_samples <= clock.window_samples + step + 16000
            track.accept_logits(frames, _logits(session, windows))
            frames, windows = track.take_windows(max_count=3)
        emo = track.take_emotions()
        assert emo.first == len(got_a2e)
        got_a2e.extend(emo.a2e_output)
        got_smoothed.extend(emo.smoothed)
    assert len(got_smoothed) == n == track.frames_done
    np.testing.assert_allclose(np.stack(got_a2e), np.stack([w.a2e_output for w in want]),
                               atol=1e-6)
    np.testing.assert_allclose(np.stack(got_smoothed), np.stack([w.smoothed for w in want]),
                               atol=1e-6)


def test_no_frame_completes_before_its_window_has_arrived(setup: Setup) -> None:
    clock, params, session, pcm = setup
    track = A2EStreamTrack(clock, params)
    lookahead = clock.window_samples - clock.half  # 30000 samples past frame 0
    track.push_audio(pcm[:lookahead - 1])
    assert track.take_windows(8)[0] == []
    assert track.frames_done == 0
    track.push_audio(pcm[lookahead - 1:lookahead])
    frames, windows = track.take_windows(8)
    assert frames == [0]
    track.accept_logits(frames, _logits(session, windows))
    # frames 0..9 exist (the audio reaches 1.875 s) and share run 0's logits
    assert track.frames_done == 10
    assert track.take_windows(8)[0] == []  # frame 10's window needs more audio
