"""Fixtures of the Audio2Emotion tests: one small A2E stand-in folder per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from a2f_standin.emotion import generate_emotion


@pytest.fixture(scope="session")
def _a2e_session_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_emotion(tmp_path_factory.mktemp("a2e") / "a2e", size="small", seed=0)


@pytest.fixture
def a2e_folder(_a2e_session_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the small A2E stand-in (safe to modify)."""
    dest = tmp_path / "a2e"
    shutil.copytree(_a2e_session_folder, dest)
    return dest
