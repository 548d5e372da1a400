"""``AnimationData.metadata["emotion_aggregate"]``: one frame's emotions, packed as the NIM does.

The value is a ``google.protobuf.Any`` holding ``EmotionAggregate`` (three lists of
``EmotionWithTimeCode``: ``input_emotions``, ``a2e_output``, ``a2f_smoothed_output``) with the
type URL of the current published stubs, :data:`TYPE_URL`. ``Any.Unpack`` compares full
message names, so the URL decides which clients can read it; :data:`LEGACY_TYPE_URL` is the
name older stub releases generated, for deployments whose clients still import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from google.protobuf import any_pb2

from a2f_inference.proto_gen.nvidia_audio2face_3d import messages_pb2
from a2f_volume.model_folder import EMOTIONS

#: Key of the aggregate in ``AnimationData.metadata``.
METADATA_KEY = "emotion_aggregate"
TYPE_URL_PREFIX = "type.googleapis.com/"
#: ``type.googleapis.com/com.nvidia.ace.services.audio2face_3d.v1.EmotionAggregate``.
TYPE_URL = TYPE_URL_PREFIX + messages_pb2.EmotionAggregate.DESCRIPTOR.full_name
LEGACY_TYPE_URL = TYPE_URL_PREFIX + "nvidia_ace.emotion_aggregate.v1.EmotionAggregate"

EmotionValues = Sequence[float] | np.ndarray | Mapping[str, float]


def _entry(time_code_s: float, values: EmotionValues) -> messages_pb2.EmotionWithTimeCode:
    msg = messages_pb2.EmotionWithTimeCode(time_code=float(time_code_s))
    if isinstance(values, Mapping):
        for name, v in values.items():
            msg.emotion[str(name)] = float(v)
        return msg
    vec = np.asarray(values, dtype=np.float64).reshape(-1)
    if vec.size != len(EMOTIONS):
        raise ValueError(f"an emotion vector has {vec.size} values, expected {len(EMOTIONS)}")
    for name, v in zip(EMOTIONS, vec, strict=True):
        msg.emotion[name] = float(v)
    return msg


def build_emotion_aggregate(
    time_code_s: float,
    smoothed: EmotionValues,
    a2e_output: EmotionValues | None = None,
    input_emotions: Iterable[tuple[float, EmotionValues]] = (),
) -> messages_pb2.EmotionAggregate:
    """The aggregate of the frame at ``time_code_s``.

    ``input_emotions`` are the client keyframes ``(time_code_s, emotions)`` that arrived since
    the previous frame (as sent: a map keeps only the names the client gave); ``a2e_output``
    is ``None`` without an A2E model (the list stays empty); vectors are in A2F order.
    """
    agg = messages_pb2.EmotionAggregate()
    for t, values in input_emotions:
        agg.input_emotions.append(_entry(t, values))
    if a2e_output is not None:
        agg.a2e_output.append(_entry(time_code_s, a2e_output))
    agg.a2f_smoothed_output.append(_entry(time_code_s, smoothed))
    return agg


def pack_emotion_aggregate(aggregate: messages_pb2.EmotionAggregate,
                           type_url: str = TYPE_URL) -> any_pb2.Any:
    """``aggregate`` in an ``Any`` with ``type_url`` (the NIM's by default)."""
    return any_pb2.Any(type_url=type_url, value=aggregate.SerializeToString())


def emotion_aggregate_any(
    time_code_s: float,
    smoothed: EmotionValues,
    a2e_output: EmotionValues | None = None,
    input_emotions: Iterable[tuple[float, EmotionValues]] = (),
    type_url: str = TYPE_URL,
) -> any_pb2.Any:
    """:func:`build_emotion_aggregate` packed for ``metadata[METADATA_KEY]``."""
    return pack_emotion_aggregate(
        build_emotion_aggregate(time_code_s, smoothed, a2e_output, input_emotions), type_url)
