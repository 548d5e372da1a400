"""Shared fixtures. Area-specific fixtures live in each tests/<area>/conftest.py."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def models_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root

@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs: a volume that fills up for real (root only; skipped with the reason)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the disk-full test runs as root in CI")
    mnt = tmp_path / "small-volume"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


from standin_fixtures import *  # noqa: E402, F403  (small_regression, small_diffusion, standin_full)
