"""The A2E stand-in: NVIDIA's folder format, and logits that follow the audio (run by ORT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from a2f_inference.audio import synthetic_speech
from a2f_standin.cli import main
from a2f_standin.emotion import PROTOTYPES, generate_emotion, reference_features
from a2f_volume.emotion_folder import A2E_CLASSES, load_emotion_folder

SR = 16000
T = 60000

#: Top-level keys of each JSON file of an A2E folder (NVIDIA's layout).
A2E_JSON_KEYS = {
    "model.json": {"networkInfoPath", "networkPath", "modelConfigPath"},
    "network_info.json": {"audio_params", "emotions"},
    "model_config.json": {"post_processing_config"},
    "trt_info.json": {"trt_build_param", "defaults", "estimated_build_time_s"},
}


def _session(folder: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(folder / "network.onnx"), providers=["CPUExecutionProvider"])


def _tone(freq: float, amp: float, n: int = T) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def _classes(folder: Path, windows: np.ndarray) -> list[str]:
    out = _session(folder).run(["output"], {"input_values": windows})[0]
    assert out.shape == (windows.shape[0], len(A2E_CLASSES))
    return [A2E_CLASSES[i] for i in out.argmax(axis=1)]


def test_json_files_have_nvidia_top_level_keys(a2e_folder: Path) -> None:
    for name, keys in A2E_JSON_KEYS.items():
        doc = json.loads((a2e_folder / name).read_text())
        assert set(doc) == keys, name
    info = json.loads((a2e_folder / "network_info.json").read_text())
    assert info == {"audio_params": {"samplerate": 16000}, "emotions": list(A2E_CLASSES)}
    cfg = json.loads((a2e_folder / "model_config.json").read_text())["post_processing_config"]
    assert cfg["emotion_correspondence"] == {
        "angry": 1, "disgust": 3, "fear": 4, "happy": 6, "neutral": -1, "sad": 9}
    trt = json.loads((a2e_folder / "trt_info.json").read_text())
    assert trt["defaults"] == {"MAX_BATCH_SIZE": 128, "OPT_BATCH_SIZE": 10}
    assert trt["trt_build_param"]["batch"] == [
        "--minShapes=input_values:1x60000", "--optShapes=input_values:{OPT_BATCH_SIZE}x60000",
        "--maxShapes=input_values:{MAX_BATCH_SIZE}x60000"]


def test_loader_reads_the_standin(a2e_folder: Path) -> None:
    folder = load_emotion_folder(a2e_folder)
    assert folder.classes == A2E_CLASSES
    assert folder.samplerate == SR and folder.window_samples == T
    assert (folder.max_batch, folder.opt_batch) == (128, 10)
    assert folder.post.correspondence == (1, 3, 4, 6, -1, 9)


@pytest.mark.parametrize(
    ("freq", "amp", "expected"),
    [
        (150.0, 0.5, "angry"),  # loud, low
        (1000.0, 0.5, "happy"),  # loud, bright
        (150.0, 0.02, "sad"),  # quiet, low
        (1100.0, 0.02, "fear"),  # quiet, bright
    ],
)
def test_loudness_and_pitch_select_the_class(
        a2e_folder: Path, freq: float, amp: float, expected: str) -> None:
    assert _classes(a2e_folder, _tone(freq, amp)[None, :]) == [expected]


def test_silence_is_neutral_and_dynamic_length_and_batch_work(a2e_folder: Path) -> None:
    windows = np.zeros((3, 16000), dtype=np.float32)
    windows[1] = _tone(150.0, 0.5, 16000)
    assert _classes(a2e_folder, windows) == ["neutral", "angry", "neutral"]


def test_logits_match_the_reference_features(a2e_folder: Path) -> None:
    x = np.frombuffer(synthetic_speech(4.0, seed=3), dtype="<i2").astype(np.float32) / 32768
    x = x[:T]
    logits = _session(a2e_folder).run(["output"], {"input_values": x[None, :]})[0][0]
    u, z = reference_features(x)
    base = -10.0 * ((u - np.array(PROTOTYPES)[:, 0]) ** 2 + (z - np.array(PROTOTYPES)[:, 1]) ** 2)
    # the seeded conv branch adds at most 0.25 per class
    assert np.max(np.abs(logits - base)) <= 0.25 + 1e-4
    assert np.max(np.abs(logits - base)) > 0  # and it is really there


def test_loud_and_quiet_halves_of_one_clip_differ(a2e_folder: Path) -> None:
    speech = np.frombuffer(synthetic_speech(8.0, seed=1), dtype="<i2").astype(np.float32)
    clip = speech / 32768
    clip[len(clip) // 2:] *= 0.05  # the second half spoken quietly
    half = len(clip) // 2
    got = _classes(a2e_folder, np.stack([clip[:T], clip[half:half + T]]))
    assert got[0] != got[1], got
    assert "neutral" not in got


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a = generate_emotion(tmp_path / "a", seed=5)
    b = generate_emotion(tmp_path / "b", seed=5)
    c = generate_emotion(tmp_path / "c", seed=6)
    for name in ("network.onnx", *A2E_JSON_KEYS):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "network.onnx").read_bytes() != (c / "network.onnx").read_bytes()


def test_cli_writes_an_emotion_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emotion", "--out", str(tmp_path / "e"), "--seed", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "e")
    assert load_emotion_folder(tmp_path / "e").classes == A2E_CLASSES
    with pytest.raises(SystemExit):
        main(["emotions", "--out", str(tmp_path / "x")])


def test_full_size_has_the_same_interface_and_classes(tmp_path: Path) -> None:
    full = generate_emotion(tmp_path / "full", size="full", seed=0)
    assert load_emotion_folder(full).window_samples == T
    windows = np.stack([_tone(150.0, 0.5), np.zeros(T, dtype=np.float32)])
    assert _classes(full, windows) == ["angry", "neutral"]
