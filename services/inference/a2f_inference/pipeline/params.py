"""The NIM parameter surface: names, ranges, defaults and validation.

Four groups arrive in the stream header (``AudioWithEmotionStreamHeader``):

* ``face_params.float_params`` -> :class:`FaceParams` (camelCase NIM keys, mapped to the
  snake_case ``model_config.json`` keys; defaults come from the identity's config);
* ``blendshape_params`` -> :class:`BlendshapeParamsNim` (per-blendshape multipliers and
  offsets keyed by the emitted blendshape name, optional clamping);
* ``emotion_params`` -> :class:`EmotionParams`;
* ``emotion_post_processing_params`` -> :class:`EmotionPostProcessingParams`.

Every ``from_nim`` raises :class:`a2f_volume.errors.InvalidArgumentError` for an unknown key
(the message lists the allowed keys) or an out-of-range value (the message names the key and
its allowed range). Values are plain Python objects so the classes are hashable and usable as
cache keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from a2f_volume.errors import InvalidArgumentError
from a2f_volume.model_folder import (
    ARKIT_SKIN_NAMES,
    EMOTIONS,
    TONGUE_OUTPUT_NAMES,
    npz_pose_key,
)


@dataclass(frozen=True)
class ParamRange:
    """Closed range ``[low, high]``; ``low_open`` makes the lower end exclusive."""

    low: float
    high: float
    low_open: bool = False

    def contains(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        above = v > self.low if self.low_open else v >= self.low
        return above and v <= self.high

    def describe(self) -> str:
        lo = "(" if self.low_open else "["
        high = "inf" if math.isinf(self.high) else f"{self.high:g}"
        return f"{lo}{self.low:g}, {high}]"


#: NIM ``face_params`` key -> (model_config key, allowed range).
FACE_PARAM_KEYS: Mapping[str, tuple[str, ParamRange]] = MappingProxyType(
    {
        "lowerFaceSmoothing": ("lower_face_smoothing", ParamRange(0.0, 0.1)),
        "upperFaceSmoothing": ("upper_face_smoothing", ParamRange(0.0, 0.1)),
        "lowerFaceStrength": ("lower_face_strength", ParamRange(0.0, 2.0)),
        "upperFaceStrength": ("upper_face_strength", ParamRange(0.0, 2.0)),
        "faceMaskLevel": ("face_mask_level", ParamRange(0.0, 1.0)),
        "faceMaskSoftness": ("face_mask_softness", ParamRange(0.001, 0.5)),
        "skinStrength": ("skin_strength", ParamRange(0.0, 2.0)),
        "blinkStrength": ("blink_strength", ParamRange(0.0, 2.0)),
        "eyelidOpenOffset": ("eyelid_open_offset", ParamRange(-1.0, 1.0)),
        "lipOpenOffset": ("lip_open_offset", ParamRange(-0.2, 0.2)),
        "blinkOffset": ("blink_offset", ParamRange(0.0, 1.0)),
        "tongueStrength": ("tongue_strength", ParamRange(0.0, 3.0)),
        "tongueHeightOffset": ("tongue_height_offset", ParamRange(-3.0, 3.0)),
        "tongueDepthOffset": ("tongue_depth_offset", ParamRange(-3.0, 3.0)),
    }
)

#: The names blendshape maps are keyed by: the 52 skin names then the 16 tongue names, in
#: the order the NIM emits them.
OUTPUT_BLENDSHAPE_NAMES: tuple[str, ...] = ARKIT_SKIN_NAMES + TONGUE_OUTPUT_NAMES


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidArgumentError(f"parameter {key!r}: {v!r} is not a number")
    f = float(v)
    if not math.isfinite(f):
        raise InvalidArgumentError(f"parameter {key!r}: {v!r} is not a finite number")
    return f


def _checked(key: str, v: Any, rng: ParamRange) -> float:
    f = _number(key, v)
    if not rng.contains(f):
        raise InvalidArgumentError(
            f"parameter {key!r}: {f:g} is out of range; allowed {rng.describe()}"
        )
    return f


def _unknown(group: str, key: object, allowed: tuple[str, ...]) -> InvalidArgumentError:
    return InvalidArgumentError(f"{group}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")


@dataclass(frozen=True)
class FaceParams:
    """Post-processing parameters of one stream (snake_case ``model_config`` names).

    The 14 NIM-settable values come first; the others are taken from the identity's config
    and cannot be changed per stream.
    """

    lower_face_smoothing: float
    upper_face_smoothing: float
    lower_face_strength: float
    upper_face_strength: float
    face_mask_level: float
    face_mask_softness: float
    skin_strength: float
    blink_strength: float
    eyelid_open_offset: float
    lip_open_offset: float
    blink_offset: float
    tongue_strength: float
    tongue_height_offset: float
    tongue_depth_offset: float
    # not settable through the NIM
    input_strength: float = 1.0
    lower_teeth_strength: float = 1.0
    lower_teeth_height_offset: float = 0.0
    lower_teeth_depth_offset: float = 0.0
    eyeballs_strength: float = 1.0
    saccade_strength: float = 0.0
    right_eye_rot_x_offset: float = 0.0
    right_eye_rot_y_offset: float = 0.0
    left_eye_rot_x_offset: float = 0.0
    left_eye_rot_y_offset: float = 0.0
    eye_saccade_seed: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, float]) -> FaceParams:
        """The identity's defaults (``Identity.config``); absent keys keep the field default."""
        names = {f.name for f in fields(cls)}
        values = {k: float(v) for k, v in config.items() if k in names}
        values.setdefault("blink_offset", 0.0)
        missing = [snake for snake, _ in FACE_PARAM_KEYS.values() if snake not in values]
        if missing:
            raise InvalidArgumentError(
                f"model config lacks {', '.join(missing)} (needed as face parameter defaults)"
            )
        return cls(**values)

    @classmethod
    def from_nim(
        cls, params: Mapping[str, Any], defaults: FaceParams | Mapping[str, float]
    ) -> FaceParams:
        """Validate ``face_params.float_params`` and overlay them on ``defaults``.

        ``defaults`` is a :class:`FaceParams` or an ``Identity.config`` mapping.
        """
        base = defaults if isinstance(defaults, FaceParams) else cls.from_config(defaults)
        changes: dict[str, float] = {}
        for key, v in params.items():
            entry = FACE_PARAM_KEYS.get(str(key))
            if entry is None:
                raise _unknown("face_params", key, tuple(FACE_PARAM_KEYS))
            snake, rng = entry
            changes[snake] = _checked(str(key), v, rng)
        if not changes:
            return base
        return _replace(base, changes)

    def to_nim(self) -> dict[str, float]:
        """The 14 NIM-settable values with their camelCase keys."""
        return {nim: float(getattr(self, snake)) for nim, (snake, _) in FACE_PARAM_KEYS.items()}


def _replace(base: FaceParams, changes: Mapping[str, float]) -> FaceParams:
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    values.update(changes)
    return FaceParams(**values)


@dataclass(frozen=True)
class BlendshapeParamsNim:
    """``blendshape_params`` of the stream header, over the 68 emitted names.

    ``multipliers`` / ``offsets`` are tuples of 68 values in :data:`OUTPUT_BLENDSHAPE_NAMES`
    order (missing names = x1 / +0). They apply after the model's own
    ``bsWeightMultipliers`` / ``bsWeightOffsets``; ``enable_clamping`` then clamps to [0, 1].
    """

    multipliers: tuple[float, ...] = (1.0,) * len(OUTPUT_BLENDSHAPE_NAMES)
    offsets: tuple[float, ...] = (0.0,) * len(OUTPUT_BLENDSHAPE_NAMES)
    enable_clamping: bool = False

    @classmethod
    def from_nim(
        cls,
        bs_weight_multipliers: Mapping[str, Any] | None = None,
        bs_weight_offsets: Mapping[str, Any] | None = None,
        enable_clamping_bs_weight: bool = False,
    ) -> BlendshapeParamsNim:
        """Validate the two maps (keys: emitted names such as ``JawOpen`` / ``TongueTipUp``,
        or their lowerCamel npz form) and build the value tuples."""
        mult = _name_map("bs_weight_multipliers", bs_weight_multipliers or {}, 1.0)
        offs = _name_map("bs_weight_offsets", bs_weight_offsets or {}, 0.0)
        if not isinstance(enable_clamping_bs_weight, bool):
            raise InvalidArgumentError(
                f"parameter 'enable_clamping_bs_weight': {enable_clamping_bs_weight!r} "
                "is not a boolean"
            )
        return cls(mult, offs, enable_clamping_bs_weight)

    @property
    def is_identity(self) -> bool:
        """True when the NIM maps change nothing and clamping is off."""
        return (
            not self.enable_clamping
            and all(m == 1.0 for m in self.multipliers)
            and all(o == 0.0 for o in self.offsets)
        )


_NAME_INDEX: Mapping[str, int] = MappingProxyType(
    {
        **{n: i for i, n in enumerate(OUTPUT_BLENDSHAPE_NAMES)},
        **{npz_pose_key(n): i for i, n in enumerate(OUTPUT_BLENDSHAPE_NAMES)},
    }
)


def _name_map(group: str, m: Mapping[str, Any], fill: float) -> tuple[float, ...]:
    out = [fill] * len(OUTPUT_BLENDSHAPE_NAMES)
    for key, v in m.items():
        idx = _NAME_INDEX.get(str(key))
        if idx is None:
            raise _unknown(group, key, OUTPUT_BLENDSHAPE_NAMES)
        out[idx] = _number(f"{group}[{key}]", v)
    return tuple(out)


#: Range of each emotion value (``beginning_emotion`` and client keyframes).
EMOTION_VALUE_RANGE = ParamRange(0.0, 1.0)


def _emotion_map(group: str, m: Mapping[str, Any]) -> tuple[float, ...]:
    out = [0.0] * len(EMOTIONS)
    for key, v in m.items():
        k = str(key)
        if k not in EMOTIONS:
            raise _unknown(group, key, EMOTIONS)
        out[EMOTIONS.index(k)] = _checked(f"{group}[{k}]", v, EMOTION_VALUE_RANGE)
    return tuple(out)


def emotion_vector(group: str, m: Mapping[str, Any]) -> tuple[float, ...]:
    """A 10-value emotion vector (A2F order) from a name -> value map (0..1 each)."""
    return _emotion_map(group, m)


#: ``emotion_params`` keys with ranges.
EMOTION_PARAM_RANGES: Mapping[str, ParamRange] = MappingProxyType(
    {"live_transition_time": ParamRange(0.0, math.inf, low_open=True)}
)


@dataclass(frozen=True)
class EmotionParams:
    """``emotion_params``: transition time (s, > 0) and the starting emotion (A2F order)."""

    live_transition_time: float = 0.5
    beginning_emotion: tuple[float, ...] = (0.0,) * len(EMOTIONS)

    @classmethod
    def from_nim(cls, params: Mapping[str, Any]) -> EmotionParams:
        allowed = ("live_transition_time", "beginning_emotion")
        ltt = cls.live_transition_time
        begin = (0.0,) * len(EMOTIONS)
        for key, v in params.items():
            if key == "live_transition_time":
                ltt = _checked(key, v, EMOTION_PARAM_RANGES[key])
            elif key == "beginning_emotion":
                if not isinstance(v, Mapping):
                    raise InvalidArgumentError(
                        f"parameter 'beginning_emotion': expected a map of emotion -> value, "
                        f"got {type(v).__name__}"
                    )
                begin = _emotion_map("beginning_emotion", v)
            else:
                raise _unknown("emotion_params", key, allowed)
        return cls(ltt, begin)


#: ``emotion_post_processing_params`` keys with ranges (``enable_preferred_emotion`` is a bool).
EMOTION_POST_RANGES: Mapping[str, ParamRange] = MappingProxyType(
    {
        "emotion_contrast": ParamRange(0.3, 3.0),
        "live_blend_coef": ParamRange(0.0, 1.0),
        "preferred_emotion_strength": ParamRange(0.0, 1.0),
        "emotion_strength": ParamRange(0.0, 1.0),
        "max_emotions": ParamRange(1, 6),
    }
)


@dataclass(frozen=True)
class EmotionPostProcessingParams:
    """``emotion_post_processing_params`` with the NIM defaults."""

    emotion_contrast: float = 1.0
    live_blend_coef: float = 0.7
    enable_preferred_emotion: bool = True
    preferred_emotion_strength: float = 0.5
    emotion_strength: float = 0.6
    max_emotions: int = 3

    @classmethod
    def from_nim(cls, params: Mapping[str, Any]) -> EmotionPostProcessingParams:
        allowed = (*EMOTION_POST_RANGES, "enable_preferred_emotion")
        values: dict[str, Any] = {}
        for key, v in params.items():
            k = str(key)
            if k == "enable_preferred_emotion":
                if not isinstance(v, bool):
                    raise InvalidArgumentError(
                        f"parameter 'enable_preferred_emotion': {v!r} is not a boolean"
                    )
                values[k] = v
            elif k in EMOTION_POST_RANGES:
                f = _checked(k, v, EMOTION_POST_RANGES[k])
                if k == "max_emotions":
                    if f != int(f):
                        raise InvalidArgumentError(
                            f"parameter 'max_emotions': {f:g} is not an integer; "
                            f"allowed {EMOTION_POST_RANGES[k].describe()}"
                        )
                    values[k] = int(f)
                else:
                    values[k] = f
            else:
                raise _unknown("emotion_post_processing_params", key, allowed)
        return cls(**values)
