"""NIM parameters: defaults from the model, ranges, unknown keys, error messages."""

from __future__ import annotations

import pytest
from pn_synthetic import MARK_CONFIG

from a2f_inference.pipeline.params import (
    EMOTION_POST_RANGES,
    FACE_PARAM_KEYS,
    OUTPUT_BLENDSHAPE_NAMES,
    BlendshapeParamsNim,
    EmotionParams,
    EmotionPostProcessingParams,
    FaceParams,
)
from a2f_volume.errors import InvalidArgumentError


def test_face_defaults_come_from_the_identity_config() -> None:
    face = FaceParams.from_nim({}, MARK_CONFIG)
    assert face.lower_face_smoothing == 0.0023
    assert face.lower_face_strength == 1.4
    assert face.input_strength == 1.3
    assert face.right_eye_rot_y_offset == -2.0
    assert face.to_nim()["lipOpenOffset"] == -0.03


def test_face_overrides_map_camel_case_to_config_keys() -> None:
    face = FaceParams.from_nim({"skinStrength": 0.5, "tongueDepthOffset": -1.0}, MARK_CONFIG)
    assert face.skin_strength == 0.5 and face.tongue_depth_offset == -1.0
    assert face.upper_face_strength == 1.0  # untouched


@pytest.mark.parametrize("key", list(FACE_PARAM_KEYS))
def test_each_out_of_range_face_param_names_key_and_range(key: str) -> None:
    rng = FACE_PARAM_KEYS[key][1]
    for bad in (rng.low - 0.5, rng.high + 0.5):
        with pytest.raises(InvalidArgumentError) as err:
            FaceParams.from_nim({key: bad}, MARK_CONFIG)
        assert key in err.value.message
        assert rng.describe() in err.value.message
    # the edges are allowed
    FaceParams.from_nim(
        {
            key: rng.low,
        },
        MARK_CONFIG,
    )
    FaceParams.from_nim({key: rng.high}, MARK_CONFIG)


def test_face_ranges_follow_the_nim_table() -> None:
    assert FACE_PARAM_KEYS["faceMaskSoftness"][1].describe() == "[0.001, 0.5]"
    assert FACE_PARAM_KEYS["lipOpenOffset"][1].describe() == "[-0.2, 0.2]"
    assert FACE_PARAM_KEYS["tongueStrength"][1].describe() == "[0, 3]"
    assert FACE_PARAM_KEYS["upperFaceSmoothing"][1].describe() == "[0, 0.1]"


def test_unknown_face_key_lists_allowed_keys() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        FaceParams.from_nim({"jawStrength": 1.0}, MARK_CONFIG)
    assert "jawStrength" in err.value.message
    assert "lowerFaceSmoothing" in err.value.message and "tongueDepthOffset" in err.value.message


@pytest.mark.parametrize("bad", ["1.0", None, True, float("nan"), float("inf")])
def test_non_numeric_face_value_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="skinStrength"):
        FaceParams.from_nim({"skinStrength": bad}, MARK_CONFIG)


def test_blendshape_maps_by_emitted_name() -> None:
    p = BlendshapeParamsNim.from_nim(
        {"JawOpen": 2.0, "tongueTipUp": 0.5}, {"EyeBlinkLeft": 0.1}, True
    )
    assert p.multipliers[OUTPUT_BLENDSHAPE_NAMES.index("JawOpen")] == 2.0
    assert p.multipliers[OUTPUT_BLENDSHAPE_NAMES.index("TongueTipUp")] == 0.5
    assert p.offsets[OUTPUT_BLENDSHAPE_NAMES.index("EyeBlinkLeft")] == 0.1
    assert p.multipliers[0] == 1.0 and p.offsets[1] == 0.0
    assert p.enable_clamping and not p.is_identity
    assert BlendshapeParamsNim.from_nim().is_identity


def test_unknown_blendshape_name_lists_allowed_names() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        BlendshapeParamsNim.from_nim({"JawOpened": 1.0})
    assert "JawOpened" in err.value.message and "bs_weight_multipliers" in err.value.message
    assert "JawOpen" in err.value.message and "TongueNarrow" in err.value.message


def test_emotion_params_ranges() -> None:
    p = EmotionParams.from_nim({"live_transition_time": 0.2, "beginning_emotion": {"joy": 0.5}})
    assert p.live_transition_time == 0.2 and p.beginning_emotion[6] == 0.5
    with pytest.raises(InvalidArgumentError, match=r"live_transition_time.*\(0, inf\]"):
        EmotionParams.from_nim({"live_transition_time": 0.0})
    with pytest.raises(InvalidArgumentError, match=r"beginning_emotion\[joy\].*\[0, 1\]"):
        EmotionParams.from_nim({"beginning_emotion": {"joy": 1.5}})
    with pytest.raises(InvalidArgumentError, match=r"happiness.*amazement"):
        EmotionParams.from_nim({"beginning_emotion": {"happiness": 0.5}})
    with pytest.raises(InvalidArgumentError, match="allowed keys"):
        EmotionParams.from_nim({"transition": 1.0})


def test_emotion_post_processing_defaults_and_ranges() -> None:
    d = EmotionPostProcessingParams.from_nim({})
    assert (d.emotion_contrast, d.live_blend_coef, d.enable_preferred_emotion) == (1.0, 0.7, True)
    assert (d.preferred_emotion_strength, d.emotion_strength, d.max_emotions) == (0.5, 0.6, 3)
    for key, rng in EMOTION_POST_RANGES.items():
        with pytest.raises(InvalidArgumentError) as err:
            EmotionPostProcessingParams.from_nim({key: rng.high + 1})
        assert key in err.value.message and rng.describe() in err.value.message
    assert EmotionPostProcessingParams.from_nim({"max_emotions": 6}).max_emotions == 6
    with pytest.raises(InvalidArgumentError, match=r"max_emotions.*integer"):
        EmotionPostProcessingParams.from_nim({"max_emotions": 2.5})
    with pytest.raises(InvalidArgumentError, match="enable_preferred_emotion"):
        EmotionPostProcessingParams.from_nim({"enable_preferred_emotion": 1})
    with pytest.raises(InvalidArgumentError, match="allowed keys"):
        EmotionPostProcessingParams.from_nim({"contrast": 1})
