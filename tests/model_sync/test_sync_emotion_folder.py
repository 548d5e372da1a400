"""An Audio2Emotion folder in S3 syncs like any model folder (no special case in model-sync)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from a2f_standin.emotion import generate_emotion
from a2f_volume import versions
from a2f_volume.emotion_folder import load_emotion_folder
from a2f_volume.layout import list_model_dirs
from a2f_volume.model_kind import model_family

from .conftest import sync_once, upload_model

pytestmark = pytest.mark.s3

PREFIX = "a2f-models/"


def test_a2e_folder_from_s3_is_published_and_loads(
        s3: Any, bucket: str, moto_url: str, models_root: Path, tmp_path: Path) -> None:
    local = generate_emotion(tmp_path / "a2e")
    files = {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}
    upload_model(s3, bucket, PREFIX, "a2e", files)
    report = sync_once(models_root, f"s3://{bucket}/{PREFIX}", moto_url)
    assert sorted(report.published) == ["a2e"], report.errors
    folder = models_root / "a2e"
    assert versions.is_managed(folder)
    assert list_model_dirs(models_root) == [folder]
    assert model_family(folder) == "emotion"
    assert load_emotion_folder(folder).path == folder
    assert (folder / "network.onnx").read_bytes() == (local / "network.onnx").read_bytes()
