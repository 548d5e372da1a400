"""``kill -9`` of real sync processes at random points of a large sync, then a restart."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from a2f_volume import versions

from .conftest import model_files, read_consistent, staging_leftovers, upload_model

pytestmark = [pytest.mark.s3, pytest.mark.slow]

PREFIX = "a2f-models/"


def _cli(models_root: Path, bucket: str, endpoint: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "a2f_model_sync.cli", "--once", "--source",
            f"s3://{bucket}/{PREFIX}", "--dest", str(models_root), "--endpoint-url", endpoint,
            "--multipart-chunk-bytes", str(4 << 20), "--max-concurrency", "4",
            "--grace-s", "0", "--keep-versions", "1", *extra]


def _check_published_state(models_root: Path) -> int | None:
    """The model folder is absent or a complete, consistent version; its generation."""
    folder = models_root / "m"
    if not folder.exists():
        assert not folder.is_symlink(), "dangling model symlink"
        return None
    with versions.pin(folder) as real:
        return read_consistent(real)


def test_kill_9_at_random_points_then_restart_converges(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    seed = int(os.environ.get("A2F_TEST_SEED", "1234"))
    rng = random.Random(seed)
    size = 24 << 20  # large objects: six 4 MiB ranged GETs each
    cmd = _cli(models_root, bucket, moto_url, "--max-bytes-per-s", str(24 << 20))
    kills = mid_download = 0
    gen = 0
    for round_ in range(6):
        gen += 1  # always something to do: a new generation of every file
        upload_model(s3, bucket, PREFIX, "m", model_files(gen, n_files=3, size=size))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if round_ % 2:  # a random point of the download itself
            wait_until = time.monotonic() + 30
            while not staging_leftovers(models_root) and time.monotonic() < wait_until:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # a random point anywhere: start-up, listing, download, publish
            time.sleep(rng.uniform(0.2, 4.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(30)
        mid_download += bool(staging_leftovers(models_root))
        published = _check_published_state(models_root)
        assert published is None or 1 <= published <= gen, f"seed {seed}: gen {published}"
    print(f"seed {seed}: {kills} kills, {mid_download} of them during a download")
    assert mid_download >= 1, f"seed {seed}: no kill hit a download ({kills} kills)"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_consistent(models_root / "m") == gen
    assert staging_leftovers(models_root) == []
    assert not [e for e in os.listdir(models_root) if e.startswith(".") and e != ".a2f"]
    record = versions.read_record(models_root / "m")
    assert record is not None and {o.path for o in record.objects} == set(model_files(gen))
