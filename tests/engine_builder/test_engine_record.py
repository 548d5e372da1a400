"""The validity rule the inference server shares: content, target and engine integrity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from a2f_engine.targets import onnxruntime_target
from a2f_volume.engine_record import EngineRecord, check_engine, read_record
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths

from .helpers import builder_for, make_model

ORT = "onnxruntime"


@pytest.fixture
def built(models_root: Path) -> ModelPaths:
    folder = make_model(models_root, "mark")
    assert builder_for(models_root).ensure(folder).result == "built"
    return ModelPaths(folder)


def _reason(paths: ModelPaths) -> str:
    res = check_engine(paths, ORT, onnxruntime_target(), HashCache())
    assert res.record is None
    return res.reason


def test_built_engine_is_valid(built: ModelPaths) -> None:
    res = check_engine(built, ORT, onnxruntime_target(), HashCache())
    assert res.valid, res.reason


def test_truncated_engine_is_invalid(built: ModelPaths) -> None:
    eng = built.engine(ORT)
    data = eng.read_bytes()
    os.unlink(eng)  # the engine is a hardlink of the cache entry: never write in place
    eng.write_bytes(data[:-10])
    assert "record says" in _reason(built)


def test_same_size_engine_with_other_bytes_is_invalid(built: ModelPaths) -> None:
    eng = built.engine(ORT)
    data = bytearray(eng.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.unlink(eng)
    eng.write_bytes(bytes(data))
    assert "does not match its record" in _reason(built)


def test_missing_or_garbled_record_is_invalid(built: ModelPaths) -> None:
    rec = built.engine_record(ORT)
    rec.write_text("{\"format\": 1, \"model\": ")
    assert "unreadable engine record" in _reason(built)
    rec.unlink()
    assert "no engine record" in _reason(built)


def test_other_backend_or_engine_name_in_record_is_invalid(built: ModelPaths) -> None:
    rec_path = built.engine_record(ORT)
    doc = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps({**doc, "backend": "tensorrt"}))
    assert "backend tensorrt" in _reason(built)
    rec_path.write_text(json.dumps({**doc, "engine_file": "network.trt"}))
    assert "names network.trt" in _reason(built)


def test_record_round_trips(built: ModelPaths) -> None:
    rec = read_record(built.engine_record(ORT))
    assert EngineRecord.from_json(rec.to_json()) == rec
    with pytest.raises(ValueError, match="format"):
        EngineRecord.from_json({**rec.to_json(), "format": 99})
    with pytest.raises(ValueError, match="engine_size"):
        EngineRecord.from_json({**rec.to_json(), "engine_size": "12"})
