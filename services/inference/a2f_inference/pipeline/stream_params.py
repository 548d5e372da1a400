"""Per-stream parameters: the NIM stream header's values, validated, and the stream limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from a2f_inference.pipeline.params import (
    FACE_PARAM_KEYS,
    BlendshapeParamsNim,
    EmotionParams,
    EmotionPostProcessingParams,
    FaceParams,
)
from a2f_volume.errors import InvalidArgumentError

#: Sample rate of the networks' audio input.
NETWORK_RATE_HZ = 16000
#: Output frame rates accepted by :meth:`ModelRuntime.open_stream`, inclusive.
MIN_FPS = 1.0
MAX_FPS = 240.0

_NIM_KEYS = (
    "face_params", "face_integer_params", "face_float_array_params", "bs_weight_multipliers",
    "bs_weight_offsets", "enable_clamping_bs_weight", "live_transition_time",
    "beginning_emotion", "emotion_params", "emotion_post_processing_params",
)  # fmt: skip


@dataclass(frozen=True)
class StreamParams:
    """The validated per-stream parameters of a NIM stream header.

    ``face_overrides`` holds the NIM ``face_params`` (camelCase keys, already range-checked);
    they are laid over the identity's ``model_config`` when the stream opens
    (:meth:`face_for`). ``has_beginning_emotion`` tells whether ``emotion.beginning_emotion``
    was given (otherwise the model's ``default_emotion`` starts the stream).
    """

    face_overrides: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    blendshapes: BlendshapeParamsNim = field(default_factory=BlendshapeParamsNim)
    emotion: EmotionParams = field(default_factory=EmotionParams)
    emotion_post: EmotionPostProcessingParams = field(
        default_factory=EmotionPostProcessingParams)
    has_beginning_emotion: bool = False
    #: The header's ``emotion_post_processing_params`` and ``emotion_params`` keys exactly as
    #: set (A2E post-processing overrides only what the header sets; see docs/emotion.md).
    emotion_post_raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    emotion_raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_nim(cls, params: Mapping[str, Any] | None = None) -> StreamParams:
        """Build from the plain-dict form of a stream header.

        Keys (all optional): ``face_params`` (camelCase float map), ``bs_weight_multipliers``,
        ``bs_weight_offsets`` (maps by blendshape name), ``enable_clamping_bs_weight`` (bool),
        ``live_transition_time``, ``beginning_emotion`` (or both inside ``emotion_params``),
        ``emotion_post_processing_params`` (map). Validation errors of the parameter classes
        (:class:`InvalidArgumentError` naming the key and the allowed range) pass through.
        """
        p = dict(params or {})
        unknown = [k for k in p if k not in _NIM_KEYS]
        if unknown:
            raise InvalidArgumentError(
                f"stream parameters: unknown key {unknown[0]!r}; allowed keys: "
                f"{', '.join(_NIM_KEYS)}")
        for group in ("face_integer_params", "face_float_array_params"):
            if p.get(group):
                raise InvalidArgumentError(
                    f"face_params.{group.removeprefix('face_')}: {sorted(p[group])} not "
                    "supported; only float_params are (keys: "
                    f"{', '.join(FACE_PARAM_KEYS)})")
        face = p.get("face_params") or {}
        if not isinstance(face, Mapping):
            raise InvalidArgumentError("face_params: expected a map of name -> number")
        # validate keys and ranges now (the defaults only matter at open time)
        FaceParams.from_nim(face, _ZERO_FACE)
        bs = BlendshapeParamsNim.from_nim(
            p.get("bs_weight_multipliers"), p.get("bs_weight_offsets"),
            p.get("enable_clamping_bs_weight", False))
        emo_in: dict[str, Any] = dict(p.get("emotion_params") or {})
        for k in ("live_transition_time", "beginning_emotion"):
            if k in p:
                emo_in[k] = p[k]
        emotion = EmotionParams.from_nim(emo_in)
        post_in = dict(p.get("emotion_post_processing_params") or {})
        post = EmotionPostProcessingParams.from_nim(post_in)
        return cls(MappingProxyType({str(k): float(v) for k, v in face.items()}), bs, emotion,
                   post, "beginning_emotion" in emo_in, MappingProxyType(post_in),
                   MappingProxyType(emo_in))

    def face_for(self, config: Mapping[str, float]) -> FaceParams:
        """The stream's :class:`FaceParams`: ``face_overrides`` over an identity's config."""
        return FaceParams.from_nim(self.face_overrides, config)


_ZERO_FACE = FaceParams(**{snake: 0.0 for snake, _ in FACE_PARAM_KEYS.values()})

