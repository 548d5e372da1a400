"""The aggregate's direct encoding parses, with NVIDIA's published stubs, to exactly the
message protobuf builds from the same values."""

from __future__ import annotations

import numpy as np
import pytest
from nvidia_audio2face_3d import messages_pb2 as nv_messages

from a2f_inference.pipeline.emotion_aggregate import (
    build_emotion_aggregate,
    encode_emotion_aggregate,
)


@pytest.mark.parametrize("with_a2e", [True, False])
@pytest.mark.parametrize("t", [0.0, 1 / 30, 299.9667])
def test_encoding_matches_the_protobuf_message(with_a2e: bool, t: float) -> None:
    rng = np.random.default_rng(3)
    smoothed = rng.random(10).astype(np.float32)
    smoothed[2] = 0.0  # zero values are written too; parsers read them either way
    a2e = rng.random(10).astype(np.float32) if with_a2e else None
    inputs = [(0.0, {"joy": 1.0}), (1.5, {"fear": 0.25, "anger": 0.5})]
    got = nv_messages.EmotionAggregate.FromString(
        encode_emotion_aggregate(t, smoothed, a2e, inputs))
    want = nv_messages.EmotionAggregate.FromString(
        build_emotion_aggregate(t, smoothed, a2e, inputs).SerializeToString())
    assert got == want
    assert len(got.a2e_output) == int(with_a2e)
    assert got.a2f_smoothed_output[0].time_code == t
    assert dict(got.a2f_smoothed_output[0].emotion)["cheekiness"] == 0.0


def test_a_vector_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 10"):
        encode_emotion_aggregate(0.0, np.zeros(9, dtype=np.float32))
