"""The library chain on one clip: windows -> the A2E stand-in (ONNX Runtime) -> per-frame
post-processing -> the aggregate NVIDIA's stubs unpack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from nvidia_audio2face_3d import messages_pb2 as nv_messages

from a2f_inference.audio import synthetic_speech
from a2f_inference.pipeline.a2e_postprocess import A2EPostParams, A2EStreamState, step_streams
from a2f_inference.pipeline.a2e_window import A2EClock
from a2f_inference.pipeline.emotion_aggregate import emotion_aggregate_any
from a2f_volume.emotion_folder import load_emotion_folder
from a2f_volume.model_folder import EMOTIONS

FPS = 30


def test_loud_and_quiet_halves_drive_different_emotions_frame_by_frame(a2e_folder: Path) -> None:
    folder = load_emotion_folder(a2e_folder)
    speech = np.frombuffer(synthetic_speech(16.0, seed=2), dtype="<i2").astype(np.float32)
    clip = speech / 32768
    half = clip.size // 2
    clip[half:] *= 0.05  # the second half spoken quietly
    clock = A2EClock.create(folder.samplerate, folder.window_samples, FPS)
    n_frames = clock.frames_ready(clip.size, ended=True)
    runs = clock.inference_frames(0, n_frames)
    session = ort.InferenceSession(str(folder.onnx_path), providers=["CPUExecutionProvider"])
    logits = np.concatenate([
        session.run(["output"], {"input_values": clock.windows(clip, runs[i:i + 16])})[0]
        for i in range(0, len(runs), 16)])  # batches of 16 windows
    # two streams in one call: this clip, and the same clip with a client keyframe
    params = A2EPostParams.resolve(folder.post)
    states = [A2EStreamState(params), A2EStreamState(params)]
    keyframe = np.zeros(len(EMOTIONS), dtype=np.float32)
    keyframe[EMOTIONS.index("pain")] = 1.0
    dominant: list[str] = []
    for k in range(n_frames):
        row = logits[k // clock.inference_interval]
        steps = step_streams(states, np.stack([row, row]), [None, keyframe])
        a2e, smoothed = steps[0]
        agg = nv_messages.EmotionAggregate()
        assert emotion_aggregate_any(k / FPS, smoothed, a2e).Unpack(agg)
        assert [agg.a2f_smoothed_output[0].emotion[n] for n in EMOTIONS] == list(smoothed)
        dominant.append(EMOTIONS[int(np.argmax(a2e))])
        assert steps[1].smoothed[EMOTIONS.index("pain")] > 0.0  # the keyframe is preferred
    assert states[0].frames == n_frames
    loud = dominant[3 * FPS:7 * FPS]  # well inside each half (windows reach 1.875 s)
    quiet = dominant[11 * FPS:15 * FPS]
    top_loud = max(set(loud), key=loud.count)
    top_quiet = max(set(quiet), key=quiet.count)
    assert top_loud != top_quiet, (top_loud, top_quiet)
