"""What comes out: silence stays still, a loud vowel opens the jaw, emotions and stream
parameters reach the network and the post-processing (real ORT, small stand-ins)."""

from __future__ import annotations

import numpy as np
import pytest

from a2f_inference.audio import speech_like, to_pcm16
from a2f_inference.pipeline import StreamParams, run_offline
from a2f_inference.pipeline.emotion import EmotionTrack
from a2f_inference.pipeline.params import OUTPUT_BLENDSHAPE_NAMES
from a2f_volume.errors import InvalidArgumentError, NotFoundError
from a2f_volume.model_folder import EMOTIONS

from .conftest import RuntimeFactory

JAW = OUTPUT_BLENDSHAPE_NAMES.index("JawOpen")


def vowel(seconds: float, rate: int = 16000, amplitude: float = 0.8) -> bytes:
    """A sustained, loud 'a'-like vowel: 130 Hz harmonics shaped by formants at 730/1090 Hz."""
    t = np.arange(round(seconds * rate)) / rate
    x = np.zeros_like(t)
    for h in range(1, 25):
        f = 130.0 * h
        x += (np.exp(-(((f - 730) / 150) ** 2)) + 0.5 * np.exp(-(((f - 1090) / 150) ** 2))
              + 0.05 / h) * np.sin(2 * np.pi * f * t)
    x *= amplitude / np.abs(x).max()
    return to_pcm16(x)


def weights(frames: list) -> np.ndarray:
    return np.stack([f.weights for f in frames])


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_silence_keeps_every_weight_near_zero(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = make_runtime(kind)
    frames = run_offline(rt, b"\x00\x00" * 24000, 16000, seed=0)
    assert len(frames) == 45
    assert float(weights(frames).max()) < 0.05


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_loud_vowel_opens_the_jaw(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = make_runtime(kind)
    quiet = weights(run_offline(rt, b"\x00\x00" * 24000, 16000, seed=0))[:, JAW]
    loud = weights(run_offline(rt, vowel(1.5), 16000, seed=0))[:, JAW]
    # frames fully inside the vowel (past the first window)
    assert float(np.median(loud[10:])) > float(quiet.max()) + 0.2


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_explicit_emotions_reach_the_network(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = make_runtime(kind, record=True)
    pcm = to_pcm16(speech_like(1.2))
    run_offline(rt, pcm, 16000, constant_noise=True, seed=1,
                emotions=[(0.0, {"joy": 1.0}), (1.0, {"fear": 0.5})])
    calls = rt.engine.calls  # type: ignore[attr-defined]
    if kind == "regression":
        emo = np.concatenate([c[0]["emotion"][:, 0, -10:] for c in calls])
        t = np.arange(emo.shape[0]) / 30.0
    else:
        emo = np.concatenate([c[0]["emotion"][0] for c in calls])
        g = np.concatenate([np.arange(30) + 30 * k - 45 for k in range(len(calls))])
        t = np.maximum(g, 0) / 60.0
    joy, fear = EMOTIONS.index("joy"), EMOTIONS.index("fear")
    np.testing.assert_allclose(emo[:, joy], np.interp(t, [0.0, 1.0], [1.0, 0.0]), atol=1e-6)
    np.testing.assert_allclose(emo[:, fear], np.interp(t, [0.0, 1.0], [0.0, 0.5]), atol=1e-6)
    others = [i for i in range(10) if i not in (joy, fear)]
    np.testing.assert_array_equal(emo[:, others], 0.0)


def test_emotion_track_interpolates_and_holds() -> None:
    tr = EmotionTrack(np.full(10, 0.25))
    np.testing.assert_allclose(tr.at(np.array([0.0, 3.0])), 0.25)  # start emotion
    tr.add([(2.0, {"anger": 1.0}), (1.0, {"anger": 0.0, "pain": 0.4})])
    out = tr.at(np.array([0.0, 1.0, 1.5, 2.0, 9.0]))
    anger, pain = EMOTIONS.index("anger"), EMOTIONS.index("pain")
    np.testing.assert_allclose(out[:, anger], [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(out[:, pain], [0.4, 0.4, 0.2, 0.0, 0.0])
    tr.add([(2.0, {"anger": 0.5})])  # same time replaces
    assert tr.at(np.array([2.0]))[0, anger] == pytest.approx(0.5)


def test_unknown_emotion_is_rejected_with_the_allowed_names(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("regression")
    session = rt.open_stream(None, None, input_rate=16000)
    try:
        with pytest.raises(InvalidArgumentError) as info:
            session.push_emotions([(0.0, {"joy": 0.5}), (1.0, {"happiness": 1.0})])
        for name in EMOTIONS:
            assert name in str(info.value)
        assert "happiness" in str(info.value)
        with pytest.raises(InvalidArgumentError, match="out of range"):
            session.push_emotions([(0.0, {"joy": 1.5})])
        with pytest.raises(InvalidArgumentError, match="negative"):
            session.push_emotions([(-1.0, {"joy": 0.5})])
    finally:
        session.close()


def test_beginning_emotion_starts_the_stream(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("regression", record=True)
    run_offline(rt, to_pcm16(speech_like(0.4)), 16000,
                params={"beginning_emotion": {"grief": 0.7}})
    emo = rt.engine.calls[0][0]["emotion"][0, 0, -10:]  # type: ignore[attr-defined]
    assert emo[EMOTIONS.index("grief")] == pytest.approx(0.7)


def test_stream_params_from_nim_validate(make_runtime: RuntimeFactory) -> None:
    with pytest.raises(InvalidArgumentError, match="skinStrength"):
        StreamParams.from_nim({"face_params": {"skinStrength": 7.0}})
    with pytest.raises(InvalidArgumentError, match="allowed keys"):
        StreamParams.from_nim({"face_params": {"noSuchParam": 1.0}})
    with pytest.raises(InvalidArgumentError, match="JawOpen"):
        StreamParams.from_nim({"bs_weight_multipliers": {"JawOpn": 1.0}})
    with pytest.raises(InvalidArgumentError, match="unknown key"):
        StreamParams.from_nim({"colour": 1})
    p = StreamParams.from_nim({"face_params": {"skinStrength": 0.5}, "live_transition_time": 0.2,
                               "emotion_post_processing_params": {"max_emotions": 2}})
    rt = make_runtime("regression")
    s = rt.open_stream(None, p, input_rate=16000)
    assert s.face.skin_strength == 0.5
    assert s.face.lower_face_strength == rt.folder.identities[0].config["lower_face_strength"]
    s.close()
    with pytest.raises(NotFoundError, match="available"):
        rt.open_stream("Nobody", None, input_rate=16000)
    with pytest.raises(InvalidArgumentError, match="sample rate"):
        rt.open_stream(None, None, input_rate=8000)
    with pytest.raises(InvalidArgumentError, match="frame rate"):
        rt.open_stream(None, None, input_rate=16000, output_fps=0.0)


def test_blendshape_multipliers_apply(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("regression")
    pcm = vowel(1.0)
    base = weights(run_offline(rt, pcm, 16000))
    half = weights(run_offline(rt, pcm, 16000, params={"bs_weight_multipliers": {"JawOpen": 0.5}}))
    np.testing.assert_allclose(half[:, JAW], 0.5 * base[:, JAW], rtol=1e-5, atol=1e-7)
