"""The top-level key set of every JSON file a stand-in generator writes is pinned.

NVIDIA's runtime (and independent reimplementations with strict schemas) reject unknown or
misplaced keys, so a drift in what the generators write must fail here. Each stand-in kind is
one entry of ``STANDINS``: how to write a small folder, and per file-name pattern the exact
top-level keys. Every ``*.json`` file of the folder must match exactly one pattern and every
pattern must match at least one file.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from a2f_standin import generate
from a2f_standin.emotion import generate_emotion
from a2f_volume.model_folder import load_model_folder

TRT_INFO_KEYS = frozenset({"trt_build_param", "defaults", "estimated_build_time_s"})
NETWORK_INFO_KEYS = frozenset({"id", "params", "audio_params"})


@dataclass(frozen=True)
class StandinKeys:
    """How to write one small stand-in folder and the top-level keys of its JSON files."""

    write: Callable[[Path], Path]
    keys: Mapping[str, frozenset[str]]  # file-name pattern (fnmatch) -> exact key set


STANDINS: dict[str, StandinKeys] = {
    "regression": StandinKeys(
        write=lambda out: generate("regression", out, size="small"),
        keys={
            "model.json": frozenset(
                {
                    "networkInfoPath",
                    "networkPath",
                    "emotionDatabasePath",
                    "modelConfigPath",
                    "modelDataPath",
                    "blendshapePaths",
                }
            ),
            "network_info.json": NETWORK_INFO_KEYS,
            "model_config.json": frozenset({"config"}),
            "bs_*_config.json": frozenset({"blendshape_params"}),
            "trt_info.json": TRT_INFO_KEYS,
        },
    ),
    "diffusion": StandinKeys(
        write=lambda out: generate("diffusion", out, size="small"),
        keys={
            "model.json": frozenset(
                {
                    "networkInfoPath",
                    "networkPath",
                    "modelConfigPaths",
                    "modelDataPaths",
                    "blendshapePaths",
                }
            ),
            "network_info.json": NETWORK_INFO_KEYS,
            "model_config_*.json": frozenset({"config"}),
            "bs_*_config_*.json": frozenset({"blendshape_params"}),
            "trt_info.json": TRT_INFO_KEYS,
        },
    ),
    # Audio2Emotion: NVIDIA's audio2emotion-models layout (single network, no identities)
    "emotion": StandinKeys(
        write=lambda out: generate_emotion(out, size="small"),
        keys={
            "model.json": frozenset({"networkInfoPath", "networkPath", "modelConfigPath"}),
            "network_info.json": frozenset({"audio_params", "emotions"}),
            "model_config.json": frozenset({"post_processing_config"}),
            "trt_info.json": TRT_INFO_KEYS,
        },
    ),
}


@pytest.fixture(scope="module")
def standin_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("standin-keys")
    return {name: spec.write(base / name) for name, spec in STANDINS.items()}


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_json_files_have_exactly_the_pinned_top_level_keys(
    name: str, standin_folders: dict[str, Path]
) -> None:
    folder, patterns = standin_folders[name], STANDINS[name].keys
    files = sorted(p.name for p in folder.glob("*.json"))
    matched: dict[str, list[str]] = {pattern: [] for pattern in patterns}
    for file in files:
        hits = [pattern for pattern in patterns if fnmatch.fnmatchcase(file, pattern)]
        assert len(hits) == 1, f"{name}/{file}: matches {hits}, expected exactly one pattern"
        matched[hits[0]].append(file)
        doc = json.loads((folder / file).read_text(encoding="utf-8"))
        assert isinstance(doc, dict), f"{name}/{file}: top level is not an object"
        assert set(doc) == patterns[hits[0]], f"{name}/{file}: top-level keys drifted"
    assert all(matched.values()), f"{name}: patterns without a file: {matched}"


def _move_audio_params_under_params(folder: Path) -> None:
    path = folder / "network_info.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["params"]["audio_params"] = doc.pop("audio_params")
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_loader_reads_audio_params_at_top_level_and_in_the_older_nested_place(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = generate(kind, tmp_path / kind, size="small")
    caplog.set_level(logging.DEBUG, logger="a2f_volume.model_folder")
    top = load_model_folder(folder).audio
    assert "audio_params read at the top level" in caplog.text
    caplog.clear()
    _move_audio_params_under_params(folder)
    nested = load_model_folder(folder).audio
    assert "audio_params read under params (older layout)" in caplog.text
    assert nested == top and top.samplerate == 16000
