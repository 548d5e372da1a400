"""``AnimationData.metadata["emotion_aggregate"]``: one frame's emotions, packed as the NIM does.

The value is a ``google.protobuf.Any`` holding ``EmotionAggregate`` (three lists of
``EmotionWithTimeCode``: ``input_emotions``, ``a2e_output``, ``a2f_smoothed_output``) with the
type URL of the current published stubs, :data:`TYPE_URL`. ``Any.Unpack`` compares full
message names, so the URL decides which clients can read it; :data:`LEGACY_TYPE_URL` is the
name older stub releases generated, for deployments whose clients still import it.

:func:`encode_emotion_aggregate` writes the same message's bytes directly (a fixed template
per vector, the values dropped in), for the server's per-frame path: building the message
through protobuf costs far more per frame than the rest of the frame's gRPC handling.
"""

from __future__ import annotations

import struct
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


# -- direct encoding ------------------------------------------------------------------------
# EmotionWithTimeCode: time_code = 1 (double), emotion = 2 (map<string, float>: entries with
# key = 1, value = 2). EmotionAggregate: input_emotions = 1, a2e_output = 2,
# a2f_smoothed_output = 3 (length-delimited).


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _vector_template() -> tuple[np.ndarray, np.ndarray]:
    """Bytes of ``EmotionWithTimeCode`` for the 10 A2F emotions with zero values, and the
    byte positions of the time code (8) and of the 10 values (4 each)."""
    out = bytearray(b"\x09" + bytes(8))  # time_code (always written)
    slots = list(range(1, 9))
    for name in EMOTIONS:
        key = name.encode()
        entry = b"\x0a" + _varint(len(key)) + key + b"\x15"
        out += b"\x12" + _varint(len(entry) + 4) + entry
        slots.extend(range(len(out), len(out) + 4))
        out += bytes(4)
    return np.frombuffer(bytes(out), dtype=np.uint8), np.asarray(slots, dtype=np.intp)


_TEMPLATE, _SLOTS = _vector_template()
_VECTOR_HEAD = {field: bytes([field << 3 | 2]) + _varint(_TEMPLATE.size) for field in (2, 3)}


def _encode_vector(field: int, time_code_s: float, values: np.ndarray) -> bytes:
    buf = _TEMPLATE.copy()
    vec = np.asarray(values, dtype="<f4").reshape(-1)
    if vec.size != len(EMOTIONS):
        raise ValueError(f"an emotion vector has {vec.size} values, expected {len(EMOTIONS)}")
    buf[_SLOTS] = np.frombuffer(struct.pack("<d", time_code_s) + vec.tobytes(), dtype=np.uint8)
    return _VECTOR_HEAD[field] + buf.tobytes()


def encode_emotion_aggregate(
    time_code_s: float,
    smoothed: np.ndarray,
    a2e_output: np.ndarray | None = None,
    input_emotions: Sequence[tuple[float, EmotionValues]] = (),
) -> bytes:
    """The serialized ``EmotionAggregate`` that :func:`build_emotion_aggregate` makes from
    the same arguments (vectors in A2F order, float32 values), written directly."""
    head = b""
    if input_emotions:
        msg = messages_pb2.EmotionAggregate()
        for t, values in input_emotions:
            msg.input_emotions.append(_entry(t, values))
        head = msg.SerializeToString()
    mid = b"" if a2e_output is None else _encode_vector(2, time_code_s, a2e_output)
    return head + mid + _encode_vector(3, time_code_s, smoothed)
