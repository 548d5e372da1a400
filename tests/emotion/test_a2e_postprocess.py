"""A2E post-processing, each step against hand-computed values, and the parameter ranges."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from a2f_inference.pipeline.a2e_postprocess import (
    A2EPostParams,
    A2EStreamState,
    blend,
    contrast_softmax,
    drop_unmapped,
    keep_top,
    scatter,
    smooth,
    step_stream,
    step_streams,
)
from a2f_volume.emotion_folder import EmotionPostConfig
from a2f_volume.errors import InvalidArgumentError

CORR = (1, 3, 4, 6, -1, 9)  # angry anger, disgust, fear, happy joy, neutral none, sad sadness

CONFIG = EmotionPostConfig(
    output_emotion_length=10, emotion_contrast=1.0, live_blend_coef=0.5,
    preferred_emotion_strength=0.5, fixed_dt=0.25, transition_smoothing=0.5,
    enable_preferred_emotion=True, preferred_emotion=(0.0,) * 10, emotion_strength=0.5,
    max_emotions=1, correspondence=CORR)


def test_step1_contrast_then_softmax() -> None:
    logits = np.array([[0, math.log(2), 0, 0, 0, 0]] * 2)
    got = contrast_softmax(logits, np.array([1.0, 2.0]))
    np.testing.assert_allclose(got[0], np.array([1, 2, 1, 1, 1, 1]) / 7)
    np.testing.assert_allclose(got[1], np.array([1, 4, 1, 1, 1, 1]) / 9)


def test_step2_neutral_dropped() -> None:
    got = drop_unmapped(np.array([[0.1, 0.1, 0.1, 0.1, 0.5, 0.1]]), np.array(CORR))
    np.testing.assert_allclose(got, [[0.1, 0.1, 0.1, 0.1, 0.0, 0.1]])


def test_step3_top_k_per_stream_earlier_class_wins_ties() -> None:
    v = np.array([[0.1, 0.5, 0.3, 0.3, 0.0, 0.2]] * 2)
    got = keep_top(v, np.array([2, 4]))
    np.testing.assert_allclose(got[0], [0, 0.5, 0.3, 0, 0, 0])
    np.testing.assert_allclose(got[1], [0, 0.5, 0.3, 0.3, 0, 0.2])


def test_step4_scatter_by_correspondence_others_keep_their_value() -> None:
    got = scatter(np.array([[0.1, 0.2, 0.3, 0.4, 0.9, 0.5]]), np.array(CORR),
                  np.full((1, 10), 0.05))
    np.testing.assert_allclose(
        got[0], [0.05, 0.1, 0.05, 0.2, 0.3, 0.05, 0.4, 0.05, 0.05, 0.5])


def test_steps5_6_blend_and_step7_smoothing_skips_first_frame() -> None:
    e, other = np.array([[1.0, 0.0]] * 2), np.array([[0.0, 1.0]] * 2)
    np.testing.assert_allclose(blend(e, other, np.array([0.25, 1.0])),
                               np.array([[0.75, 0.25], [0.0, 1.0]]))
    np.testing.assert_allclose(
        smooth(e, other, np.array([0.5, 0.5]), np.array([True, False])),
        np.array([[1.0, 0.0], [0.5, 0.5]]))


def test_two_frames_end_to_end_by_hand() -> None:
    params = A2EPostParams.resolve(CONFIG)
    assert params.smoothing_weight == 0.5
    st = A2EStreamState(params)
    logits = np.array([math.log(3), 0, 0, 0, 0, 0])
    # frame 1: softmax [3,1,1,1,1,1]/8, top-1 angry 0.375 -> anger; live blend with 0 ->
    # 0.1875; preferred (model's zeros) 0.5 -> 0.09375; first frame: no smoothing; x 0.5
    one = step_stream(st, logits)
    want_a2e = np.zeros(10)
    want_a2e[1] = 0.1875
    want_out = np.zeros(10)
    want_out[1] = 0.046875
    np.testing.assert_allclose(one.a2e_output, want_a2e)
    np.testing.assert_allclose(one.smoothed, want_out)
    # frame 2, client keyframe joy = 1: live blend 0.5*0.375 + 0.5*0.1875 = 0.28125;
    # preferred -> anger 0.140625, joy 0.5; smoothing w=0.5 with anger 0.09375 -> 0.1171875,
    # joy 0.25; x 0.5
    joy = np.zeros(10)
    joy[6] = 1.0
    two = step_stream(st, logits, joy)
    want_a2e[1] = 0.28125
    want_out[1], want_out[6] = 0.05859375, 0.125
    np.testing.assert_allclose(two.a2e_output, want_a2e)
    np.testing.assert_allclose(two.smoothed, want_out)
    assert st.frames == 2


def test_beginning_emotion_starts_blend_and_sourceless_emotions_keep_it() -> None:
    params = A2EPostParams.resolve(
        replace(CONFIG, enable_preferred_emotion=False, emotion_strength=1.0),
        emotion_params={"beginning_emotion": {"amazement": 0.4, "anger": 0.2}})
    st = A2EStreamState(params)
    out = step_stream(st, np.array([0.0, 0, 0, 0, 10.0, 0]))  # all neutral
    # amazement has no source: keeps 0.4; anger's source is ~0 -> 0.5 * 0 + 0.5 * 0.2
    assert out.smoothed[0] == pytest.approx(0.4)
    assert out.smoothed[1] == pytest.approx(0.1, abs=1e-4)


def test_disabled_preferred_emotion_ignores_keyframes() -> None:
    params = A2EPostParams.resolve(CONFIG, {"enable_preferred_emotion": False})
    a = step_stream(A2EStreamState(params), np.zeros(6), np.ones(10))
    b = step_stream(A2EStreamState(params), np.zeros(6), None)
    np.testing.assert_array_equal(a.smoothed, b.smoothed)


def test_streams_in_one_call_equal_streams_one_by_one() -> None:
    rng = np.random.default_rng(0)
    params = [A2EPostParams.resolve(CONFIG),
              A2EPostParams.resolve(CONFIG, {"max_emotions": 3, "emotion_contrast": 2.0},
                                    {"live_transition_time": 0.1})]
    together = [A2EStreamState(p) for p in params]
    alone = [A2EStreamState(p) for p in params]
    for _ in range(4):
        logits = rng.standard_normal((2, 6))
        pref = [None, rng.random(10)]
        got = step_streams(together, logits, pref)
        for i in range(2):
            want = step_stream(alone[i], logits[i], pref[i])
            np.testing.assert_allclose(got[i].smoothed, want.smoothed, rtol=1e-6)
            np.testing.assert_allclose(got[i].a2e_output, want.a2e_output, rtol=1e-6)


def test_header_overrides_model_defaults_only_where_set() -> None:
    cfg = replace(CONFIG, live_blend_coef=0.3, emotion_strength=0.8)
    p = A2EPostParams.resolve(cfg, {"emotion_strength": 0.9}, {"live_transition_time": 0.1})
    assert p.emotion_strength == 0.9
    assert p.live_blend_coef == 0.3  # the model's value, not the NIM default 0.7
    assert p.transition_smoothing == 0.1
    assert p.smoothing_weight == 1.0  # min(0.25 / 0.1, 1)
    assert A2EPostParams.resolve(cfg).transition_smoothing == 0.5
    assert A2EPostParams.resolve(cfg, default_beginning=[0.1] * 10).beginning_emotion == (
        0.1,) * 10


@pytest.mark.parametrize(
    ("post", "emo", "key"),
    [
        ({"emotion_contrast": 0.2}, {}, "emotion_contrast"),
        ({"emotion_contrast": 3.5}, {}, "emotion_contrast"),
        ({"live_blend_coef": -0.1}, {}, "live_blend_coef"),
        ({"preferred_emotion_strength": 1.1}, {}, "preferred_emotion_strength"),
        ({"emotion_strength": 2.0}, {}, "emotion_strength"),
        ({"max_emotions": 0}, {}, "max_emotions"),
        ({"max_emotions": 7}, {}, "max_emotions"),
        ({"max_emotions": 2.5}, {}, "max_emotions"),
        ({"enable_preferred_emotion": 1}, {}, "enable_preferred_emotion"),
        ({"emotion_contrastt": 1.0}, {}, "emotion_contrastt"),
        ({}, {"live_transition_time": 0.0}, "live_transition_time"),
        ({}, {"beginning_emotion": {"joy": 1.5}}, "beginning_emotion[joy]"),
        ({}, {"beginning_emotion": {"happy": 0.5}}, "happy"),
    ],
)
def test_bad_header_values_are_invalid_argument_naming_the_key(
        post: dict[str, object], emo: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        A2EPostParams.resolve(CONFIG, post, emo)
    assert info.value.status == "INVALID_ARGUMENT"
    assert key in info.value.message
