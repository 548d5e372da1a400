"""Loading an A2E folder: precise errors, family detection, discovery and the engine builder."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from a2f_engine.targets import onnxruntime_target
from a2f_engine_builder.cli import main as builder_main
from a2f_volume.emotion_folder import load_emotion_folder
from a2f_volume.engine_record import valid_engine
from a2f_volume.errors import ModelFolderError
from a2f_volume.layout import ModelPaths, list_model_dirs
from a2f_volume.model_folder import load_model_folder
from a2f_volume.model_kind import model_family


def _edit(folder: Path, name: str, change: Callable[[Any], None]) -> None:
    doc = json.loads((folder / name).read_text())
    change(doc)
    (folder / name).write_text(json.dumps(doc))


def _post(key: str, value: Any) -> Callable[[Any], None]:
    def change(doc: Any) -> None:
        doc["post_processing_config"][key] = value
    return change


def _error(folder: Path) -> ModelFolderError:
    with pytest.raises(ModelFolderError) as info:
        load_emotion_folder(folder)
    return info.value


@pytest.mark.parametrize(
    ("file", "change", "field", "expected"),
    [
        ("model_config.json", _post("emotion_contrast", 0),
         "post_processing_config.emotion_contrast", "a number > 0"),
        ("model_config.json", _post("live_blend_coef", 1.5),
         "post_processing_config.live_blend_coef", "[0, 1]"),
        ("model_config.json", _post("max_emotions", 7), "post_processing_config.max_emotions",
         "an integer in [1, 6]"),
        ("model_config.json", _post("preferred_emotion", [0.0] * 9),
         "post_processing_config.preferred_emotion", "a list of 10 numbers"),
        ("model_config.json", _post("enable_preferred_emotion", 1),
         "post_processing_config.enable_preferred_emotion", "true or false"),
        ("model_config.json", _post("emotion_correspondence", {"angry": 1}),
         "post_processing_config.emotion_correspondence", "exactly the classes"),
        ("model_config.json",
         _post("emotion_correspondence",
               {"angry": 10, "disgust": 3, "fear": 4, "happy": 6, "neutral": -1, "sad": 9}),
         "post_processing_config.emotion_correspondence.angry", "an integer in [-1, 9]"),
        ("model_config.json",
         _post("emotion_correspondence",
               {"angry": 3, "disgust": 3, "fear": 4, "happy": 6, "neutral": -1, "sad": 9}),
         "post_processing_config.emotion_correspondence", "at most one class"),
        ("model_config.json", lambda d: d["post_processing_config"].pop("fixed_dt"),
         "post_processing_config.fixed_dt", "a value"),
        ("network_info.json", lambda d: d.update(emotions=["angry", "angry"]), "emotions",
         "distinct class names"),
        ("network_info.json", lambda d: d["audio_params"].update(samplerate=0),
         "audio_params.samplerate", "an integer >= 1"),
        ("trt_info.json", lambda d: d["defaults"].update(OPT_BATCH_SIZE=500),
         "defaults.OPT_BATCH_SIZE", "an integer in [1, 128]"),
        ("model.json", lambda d: d.pop("modelConfigPath"), "modelConfigPath", "a relative file"),
        ("model.json", lambda d: d.update(networkInfoPath="../x.json"), "networkInfoPath",
         "inside the model folder"),
    ],
)
def test_bad_values_name_file_field_and_allowed(
        a2e_folder: Path, file: str, change: Callable[[Any], None], field: str,
        expected: str) -> None:
    _edit(a2e_folder, file, change)
    err = _error(a2e_folder)
    assert err.field == field
    assert expected in err.expected
    assert Path(err.path).name == (file if file != "model.json" else "model.json")


def test_onnx_interface_is_checked(a2e_folder: Path, small_regression: Path) -> None:
    (a2e_folder / "network.onnx").write_bytes((small_regression / "network.onnx").read_bytes())
    err = _error(a2e_folder)
    assert err.field == "graph.input" and "input_values" in err.expected
    (a2e_folder / "network.onnx").unlink()
    assert _error(a2e_folder).expected == "the network ONNX model"


def test_face_and_emotion_loaders_reject_each_other(
        a2e_folder: Path, small_regression: Path) -> None:
    with pytest.raises(ModelFolderError) as info:
        load_model_folder(a2e_folder)
    assert info.value.field == "id" and "Audio2Emotion" in str(info.value.found)
    err = _error(small_regression)
    assert err.field == "id" and "face model" in err.expected


def test_family_detection(a2e_folder: Path, small_regression: Path, tmp_path: Path) -> None:
    assert model_family(a2e_folder) == "emotion"
    assert model_family(small_regression) == "face"
    assert model_family(tmp_path) == "face"  # unreadable: the face loader reports it


def test_models_root_lists_it_and_the_builder_builds_and_verifies_it(
        models_root: Path, a2e_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    folder = models_root / "a2e"
    a2e_folder.rename(folder)
    assert list_model_dirs(models_root) == [folder]
    assert builder_main(["--models-root", str(models_root), "--once", "--metrics-port", "0",
                         "--ort-threads", "1"]) == 0
    rec = valid_engine(ModelPaths(folder), "onnxruntime", onnxruntime_target())
    assert rec is not None and rec.model == "a2e"
    assert rec.verification["max_abs_error"] <= 1e-4
    assert any(r.getMessage().startswith("a2e: verified:") for r in caplog.records)


def test_tensorrt_builds_a2e_in_fp32_even_when_faces_build_fp16(
        a2e_folder: Path, small_regression: Path) -> None:
    # The GPU description is a fake (no GPU here); target() only records it.
    from a2f_engine.targets import GpuInfo
    from a2f_engine_builder.backends import TensorRTBackend

    backend = TensorRTBackend("fp16", gpu=GpuInfo("Tesla T4", "7.5", "12.6", "12.8"),
                              trt_version="10.8.0")
    assert backend.precision_for(a2e_folder) == "fp32"
    assert backend.precision_for(small_regression) == "fp16"
    assert backend.target(a2e_folder).fields["precision"] == "fp32"
    assert backend.target(small_regression).fields["precision"] == "fp16"
