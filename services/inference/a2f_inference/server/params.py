"""Protobuf stream header -> pipeline parameters and session (validation is the pipeline's)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from a2f_inference.pipeline import ModelRuntime, ReadyCallback, StreamSession
from a2f_inference.pipeline.a2e_runtime import EmotionRuntime
from a2f_inference.proto_gen.nvidia_audio2face_3d import messages_pb2

_POST_FIELDS = ("emotion_contrast", "live_blend_coef", "enable_preferred_emotion",
                "preferred_emotion_strength", "emotion_strength", "max_emotions")


def header_to_dict(header: messages_pb2.AudioWithEmotionStreamHeader) -> dict[str, Any]:
    """The header's parameters as plain Python values; absent optional fields are left out."""
    out: dict[str, Any] = {}
    fp = header.face_params
    if fp.float_params:
        out["face_params"] = dict(fp.float_params)
    if fp.integer_params:
        out["face_integer_params"] = dict(fp.integer_params)
    if fp.float_array_params:
        out["face_float_array_params"] = {k: list(v.values)
                                          for k, v in fp.float_array_params.items()}
    bp = header.blendshape_params
    if bp.bs_weight_multipliers:
        out["bs_weight_multipliers"] = dict(bp.bs_weight_multipliers)
    if bp.bs_weight_offsets:
        out["bs_weight_offsets"] = dict(bp.bs_weight_offsets)
    if bp.HasField("enable_clamping_bs_weight"):
        out["enable_clamping_bs_weight"] = bp.enable_clamping_bs_weight
    ep = header.emotion_params
    if ep.HasField("live_transition_time"):
        out["live_transition_time"] = ep.live_transition_time
    if ep.beginning_emotion:
        out["beginning_emotion"] = dict(ep.beginning_emotion)
    pp = header.emotion_post_processing_params
    post = {f: getattr(pp, f) for f in _POST_FIELDS if pp.HasField(f)}
    if post:
        out["emotion_post_processing_params"] = post
    return out


def emotion_keys(items: Iterable[messages_pb2.EmotionWithTimeCode]
                 ) -> list[tuple[float, dict[str, float]]]:
    return [(float(e.time_code), dict(e.emotion)) for e in items]


def open_session(runtime: ModelRuntime, header: messages_pb2.AudioWithEmotionStreamHeader,
                 *, identity: str | None, input_rate: int, output_fps: float,
                 on_ready: ReadyCallback | None = None,
                 emotion_model: EmotionRuntime | None = None) -> StreamSession:
    """Open a pipeline stream session; the pipeline validates every parameter
    (``InvalidArgumentError`` naming the key and the allowed range). ``on_ready``: called on
    a scheduler worker thread whenever the session got frames, finished or failed.
    ``emotion_model``: the Audio2Emotion version whose output drives the stream's emotion."""
    return runtime.open_stream(identity, header_to_dict(header), input_rate=input_rate,
                               output_fps=output_fps, on_ready=on_ready,
                               emotion_model=emotion_model)
