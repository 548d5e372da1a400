"""The emotion CSV files in the layout of NVIDIA's sample client (pandas json_normalize)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from google.protobuf import any_pb2

from a2f_inference.emotion_csv import EMOTION_CSV_FILES, EmotionCsvWriter
from a2f_inference.pipeline.emotion_aggregate import emotion_aggregate_any
from a2f_volume.model_folder import EMOTIONS


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_three_files_with_index_time_code_and_emotion_values_columns(tmp_path: Path) -> None:
    w = EmotionCsvWriter()
    smoothed = np.full(10, 0.5, dtype=np.float32)
    assert w.add(emotion_aggregate_any(0.0, smoothed, smoothed * 0.5, [(0.0, {"joy": 1.0})]))
    assert w.add(emotion_aggregate_any(1 / 30, smoothed, smoothed * 0.5,
                                       [(0.02, {"anger": 0.25})]))
    assert w.add(emotion_aggregate_any(2 / 30, smoothed))  # a frame without A2E output
    paths = w.write(tmp_path)
    assert [p.name for p in paths] == list(EMOTION_CSV_FILES.values())

    a2e = _rows(tmp_path / "a2e_emotion_output.csv")
    assert a2e[0] == ["", "time_code", *(f"emotion_values.{n}" for n in EMOTIONS)]
    assert [r[:2] for r in a2e[1:]] == [["0", "0.0"], ["1", repr(1 / 30)]]
    assert a2e[1][2:] == ["0.25"] * 10

    smooth = _rows(tmp_path / "a2f_smoothed_emotion_output.csv")
    assert len(smooth) == 4 and smooth[3][1] == repr(2 / 30)

    inputs = _rows(tmp_path / "a2f_input_emotions.csv")
    assert inputs == [["", "time_code", "emotion_values.anger", "emotion_values.joy"],
                      ["0", "0.0", "", "1.0"], ["1", "0.02", "0.25", ""]]


def test_an_any_of_another_type_is_skipped_and_empty_files_match_pandas(tmp_path: Path) -> None:
    w = EmotionCsvWriter()
    assert not w.add(any_pb2.Any(type_url="type.googleapis.com/x.Other", value=b""))
    w.write(tmp_path)
    assert (tmp_path / "a2f_input_emotions.csv").read_text() == '""\n'
