"""Audio2Emotion in the stream pipeline: real stand-ins (face and A2E), real ONNX Runtime.

The face engine is the conftest's ``RecordingEngine`` (a real engine that keeps what it was
fed), so the emotion rows the face network actually received are compared with what each
frame's aggregate reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from nvidia_audio2face_3d import messages_pb2 as nv_messages

from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_inference.audio import synthetic_speech
from a2f_inference.pipeline import BatchScheduler, Frame, ModelRuntime, StreamSession
from a2f_inference.pipeline.a2e_runtime import EmotionRuntime
from a2f_inference.pipeline.a2e_scheduler import A2EScheduler
from a2f_standin.emotion import generate_emotion
from a2f_volume.emotion_folder import load_emotion_folder
from a2f_volume.errors import InvalidArgumentError
from a2f_volume.model_folder import EMOTIONS, ModelFolder

from .conftest import RecordingEngine

FPS = 30


@pytest.fixture(scope="module")
def a2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_emotion(tmp_path_factory.mktemp("a2e") / "a2e", size="small", seed=0)


@pytest.fixture
def emotion_runtime(a2e_dir: Path) -> Iterator[EmotionRuntime]:
    folder = load_emotion_folder(a2e_dir)
    engine = OnnxRuntimeEngine(folder.onnx_path, max_batch=folder.max_batch,
                               intra_op_threads=1)
    rt = EmotionRuntime(folder, engine)
    yield rt
    engine.close()


def _collect(session: StreamSession, timeout_s: float = 120.0) -> list[Frame]:
    frames = []
    deadline = time.monotonic() + timeout_s
    while not session.done:
        assert session.error is None, session.error
        assert time.monotonic() < deadline, "stream did not finish"
        session.wait(0.5)
        frames.extend(session.take_frames())
    assert session.error is None, session.error
    return frames


def _unpack(session: StreamSession, frame: Frame) -> nv_messages.EmotionAggregate:
    agg = nv_messages.EmotionAggregate()
    assert session.emotions.aggregate(frame.index, frame.time_code_s).Unpack(agg)
    return agg


def test_face_input_is_the_reported_smoothed_output_and_follows_the_voice(
        small_folders: dict[str, ModelFolder], emotion_runtime: EmotionRuntime) -> None:
    folder = small_folders["regression"]
    engine = RecordingEngine(folder.onnx_path, folder.max_batch)
    runtime = ModelRuntime(folder, engine)
    face = BatchScheduler(runtime)
    a2e = A2EScheduler(emotion_runtime)
    face.start()
    a2e.start()
    try:
        clip = np.frombuffer(synthetic_speech(16.0, seed=2), dtype="<i2").astype(np.float32)
        clip[clip.size // 2:] *= 0.02  # the second half spoken quietly
        pcm = clip.astype("<i2").tobytes()
        engine.record = True
        session = runtime.open_stream(None, None, input_rate=16000, output_fps=FPS,
                                      emotion_model=emotion_runtime)
        session.push_emotions([(0.0, {"pain": 1.0})])
        for i in range(0, len(pcm), 16000):  # half-second chunks
            session.push_audio(pcm[i:i + 16000])
        session.end_of_audio()
        frames = _collect(session)
        engine.record = False
        fed = np.concatenate([feeds["emotion"][:, 0, -len(EMOTIONS):]
                              for feeds, _ in engine.calls])
        assert len(frames) == fed.shape[0] == 16 * FPS
        dominant = []
        for f in frames:
            agg = _unpack(session, f)
            smoothed = [agg.a2f_smoothed_output[0].emotion[n] for n in EMOTIONS]
            np.testing.assert_array_equal(np.asarray(smoothed, dtype=np.float32),
                                          fed[f.index])
            a2e_out = [agg.a2e_output[0].emotion[n] for n in EMOTIONS]
            dominant.append(EMOTIONS[int(np.argmax(a2e_out))])
            if f.index == 0:
                assert [(e.time_code, dict(e.emotion)) for e in agg.input_emotions] == [
                    (0.0, {"pain": 1.0})]
            else:
                assert len(agg.input_emotions) == 0
        assert fed[:, EMOTIONS.index("pain")].min() > 0.0  # keyframe = preferred emotion
        loud, quiet = dominant[3 * FPS:7 * FPS], dominant[11 * FPS:15 * FPS]
        top_loud = max(set(loud), key=loud.count)
        top_quiet = max(set(quiet), key=quiet.count)
        assert top_loud != top_quiet, (top_loud, top_quiet)
        session.close()
    finally:
        a2e.stop()
        face.stop()
        engine.close()


def test_windows_of_many_streams_share_batches(
        small_folders: dict[str, ModelFolder], emotion_runtime: EmotionRuntime) -> None:
    folder = small_folders["regression"]
    engine = OnnxRuntimeEngine(folder.onnx_path, max_batch=folder.max_batch,
                               intra_op_threads=1)
    runtime = ModelRuntime(folder, engine)
    face = BatchScheduler(runtime)
    a2e = A2EScheduler(emotion_runtime)
    face.start()
    sessions = [runtime.open_stream(None, None, input_rate=16000, output_fps=FPS,
                                    emotion_model=emotion_runtime) for _ in range(6)]
    try:
        for i, s in enumerate(sessions):  # every stream's windows ready before A2E starts
            s.push_audio(synthetic_speech(2.0, seed=i))
            s.end_of_audio()
        a2e.start()
        for s in sessions:
            frames = _collect(s)
            assert len(frames) == 2 * FPS
            assert all(len(_unpack(s, f).a2e_output) == 1 for f in frames)
        assert a2e.max_streams_per_batch == 6
        assert a2e.windows == 6 * 6  # frames 0, 10, ..., 50 of each stream
        assert a2e.batches == 1
    finally:
        for s in sessions:
            s.close()
        a2e.stop()
        face.stop()
        engine.close()


def test_without_a2e_the_aggregate_reports_interpolated_keyframes(
        small_folders: dict[str, ModelFolder], engines: dict[str, RecordingEngine]) -> None:
    runtime = ModelRuntime(small_folders["diffusion"], engines["diffusion"])
    face = BatchScheduler(runtime)
    face.start()
    try:
        session = runtime.open_stream(None, None, input_rate=16000, output_fps=FPS,
                                      constant_noise=True, seed=0)
        session.push_emotions([(0.0, {"joy": 0.0}), (1.0, {"joy": 1.0})])
        session.push_audio(synthetic_speech(1.5))
        session.end_of_audio()
        frames = _collect(session)
        for f in frames:
            agg = _unpack(session, f)
            assert len(agg.a2e_output) == 0
            joy = agg.a2f_smoothed_output[0].emotion["joy"]
            assert joy == pytest.approx(min(f.time_code_s, 1.0), abs=1e-6)
        session.close()
    finally:
        face.stop()


def test_diffusion_streams_get_the_a2e_emotion_at_native_frames(
        small_folders: dict[str, ModelFolder], emotion_runtime: EmotionRuntime) -> None:
    folder = small_folders["diffusion"]
    engine = RecordingEngine(folder.onnx_path, folder.max_batch)
    runtime = ModelRuntime(folder, engine)
    face = BatchScheduler(runtime)
    a2e = A2EScheduler(emotion_runtime)
    face.start()
    a2e.start()
    try:
        engine.record = True
        session = runtime.open_stream(None, None, input_rate=16000, output_fps=FPS,
                                      constant_noise=True, seed=0,
                                      emotion_model=emotion_runtime)
        pcm = synthetic_speech(3.0, seed=4)
        for i in range(0, len(pcm), 8000):
            session.push_audio(pcm[i:i + 8000])
        session.end_of_audio()
        frames = _collect(session)
        engine.record = False
        assert len(frames) == 3 * FPS
        # native 60 fps: output frame i is native frame 2i; the face network's input for it
        # (row 2i of the kept frames, in inference order) is the reported smoothed output
        fed = np.concatenate([feeds["emotion"][0] for feeds, _ in engine.calls])
        d = session.diffusion_clock
        assert d is not None
        warmup = -d.first_native(0)
        for f in frames:
            agg = _unpack(session, f)
            assert len(agg.a2e_output) == 1
            smoothed = [agg.a2f_smoothed_output[0].emotion[n] for n in EMOTIONS]
            np.testing.assert_allclose(smoothed, fed[warmup + 2 * f.index], atol=1e-7)
        session.close()
    finally:
        a2e.stop()
        face.stop()
        engine.close()


def test_header_overrides_only_the_keys_it_sets(
        small_folders: dict[str, ModelFolder], emotion_runtime: EmotionRuntime) -> None:
    folder = small_folders["regression"]
    engine = OnnxRuntimeEngine(folder.onnx_path, max_batch=folder.max_batch,
                               intra_op_threads=1)
    runtime = ModelRuntime(folder, engine)
    face = BatchScheduler(runtime)
    a2e = A2EScheduler(emotion_runtime)
    face.start()
    a2e.start()
    headers: list[dict[str, object]] = [
        {}, {"emotion_post_processing_params": {"emotion_strength": 0.3}}]
    try:
        smoothed = []
        for header in headers:
            s = runtime.open_stream(None, header, input_rate=16000, output_fps=FPS,
                                    emotion_model=emotion_runtime)
            s.push_audio(synthetic_speech(2.0, seed=5))
            s.end_of_audio()
            frames = _collect(s)
            smoothed.append(np.array([[_unpack(s, f).a2f_smoothed_output[0].emotion[n]
                                       for n in EMOTIONS] for f in frames]))
            s.close()
        assert emotion_runtime.folder.post.emotion_strength == pytest.approx(0.6)
        np.testing.assert_allclose(smoothed[1], smoothed[0] * 0.3 / 0.6, rtol=1e-5,
                                   atol=1e-7)
        assert smoothed[0].max() > 0.05
        with pytest.raises(InvalidArgumentError, match="max_emotions"):
            runtime.open_stream(None, {"emotion_post_processing_params": {"max_emotions": 9}},
                                input_rate=16000, emotion_model=emotion_runtime)
    finally:
        a2e.stop()
        face.stop()
        engine.close()
