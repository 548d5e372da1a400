"""The aggregate we pack is what NVIDIA's published stubs unpack."""

from __future__ import annotations

import numpy as np
import pytest
from nvidia_ace import animation_pb2 as nv_animation
from nvidia_audio2face_3d import messages_pb2 as nv_messages

from a2f_inference.pipeline.emotion_aggregate import (
    LEGACY_TYPE_URL,
    METADATA_KEY,
    TYPE_URL,
    emotion_aggregate_any,
)
from a2f_inference.proto_gen.nvidia_ace import animation_pb2
from a2f_volume.model_folder import EMOTIONS


def test_type_url_is_the_published_stubs_full_name() -> None:
    assert TYPE_URL == (
        "type.googleapis.com/com.nvidia.ace.services.audio2face_3d.v1.EmotionAggregate")
    assert TYPE_URL.endswith("/" + nv_messages.EmotionAggregate.DESCRIPTOR.full_name)


def test_nvidia_stubs_unpack_the_packed_aggregate_from_animation_data() -> None:
    smoothed = np.linspace(0.0, 0.9, 10, dtype=np.float32)
    a2e = np.full(10, 0.25, dtype=np.float32)
    data = animation_pb2.AnimationData()
    data.metadata[METADATA_KEY].CopyFrom(emotion_aggregate_any(
        1.5, smoothed, a2e, [(1.4, {"joy": 0.75}), (1.45, {"anger": 0.5, "fear": 0.25})]))
    wire = data.SerializeToString()

    theirs = nv_animation.AnimationData.FromString(wire)
    agg = nv_messages.EmotionAggregate()
    assert theirs.metadata["emotion_aggregate"].Unpack(agg)
    assert [(e.time_code, dict(e.emotion)) for e in agg.input_emotions] == [
        (1.4, {"joy": 0.75}), (1.45, {"anger": 0.5, "fear": 0.25})]
    (out,) = agg.a2e_output
    assert out.time_code == 1.5 and dict(out.emotion) == {n: 0.25 for n in EMOTIONS}
    (sm,) = agg.a2f_smoothed_output
    assert sm.time_code == 1.5
    assert [sm.emotion[n] for n in EMOTIONS] == pytest.approx(list(smoothed))


def test_without_a2e_the_a2e_output_list_is_empty() -> None:
    agg = nv_messages.EmotionAggregate()
    assert emotion_aggregate_any(0.0, np.zeros(10)).Unpack(agg)
    assert len(agg.a2e_output) == 0 and len(agg.input_emotions) == 0
    assert len(agg.a2f_smoothed_output) == 1


def test_legacy_url_is_not_unpacked_by_current_stubs() -> None:
    packed = emotion_aggregate_any(0.0, np.zeros(10), type_url=LEGACY_TYPE_URL)
    assert not packed.Unpack(nv_messages.EmotionAggregate())


def test_vectors_must_have_ten_values() -> None:
    with pytest.raises(ValueError, match="10"):
        emotion_aggregate_any(0.0, np.zeros(6))
