"""A full volume recovers by itself: a model-sync daemon (a real process) fails ``disk_full``
while readers lease the old versions, and publishes the pending version as soon as the leases
are released and GC can free space, with no hand action. A real 40 MiB tmpfs (created when
the test runs as root, skipped with the reason otherwise) and a real S3 server on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import AWS_ENV, moto_server, s3_client
from volume_services import services

from a2f_volume import versions

pytestmark = pytest.mark.s3
PREFIX = "a2f-models/"
BUCKET = "models"
FILE_BYTES = 7 << 20


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
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


def generation_bytes(gen: int) -> bytes:
    return f"gen={gen}\n".encode() + hashlib.shake_256(str(gen).encode()).digest(FILE_BYTES)


def upload_generation(s3: Any, gen: int) -> None:
    """One 7 MiB data file per generation (a single object: the source changes atomically)."""
    if gen == 1:
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}m/model.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}m/data.bin", Body=generation_bytes(gen))


def generation(folder: Path) -> int:
    """The generation the folder serves, read from one pinned version, checked in full."""
    with versions.pin(folder) as real:
        data = (real / "data.bin").read_bytes()
    gen = int(data.split(b"\n", 1)[0].removeprefix(b"gen="))
    assert data == generation_bytes(gen)
    return gen


def test_full_volume_recovers_once_leases_are_released(small_volume: Path,
                                                       tmp_path: Path) -> None:
    root = small_volume / "models"
    with moto_server() as url, services(tmp_path) as svc, contextlib.ExitStack() as leases:
        s3 = s3_client(url)
        s3.create_bucket(Bucket=BUCKET)
        upload_generation(s3, 1)
        svc.start("model-sync", ["a2f-model-sync", "--source", f"s3://{BUCKET}/{PREFIX}",
                                 "--dest", str(root), "--endpoint-url", url, "--interval-s",
                                 "0.5", "--retry-max-s", "1", "--grace-s", "0",
                                 "--keep-versions", "0", "--health-port", "-1"], AWS_ENV)
        for gen in (1, 2, 3):
            if gen > 1:
                upload_generation(s3, gen)
            svc.wait(f"generation {gen} published", lambda g=gen: (root / "m").is_dir() and
                     generation(root / "m") == g)
            leases.enter_context(versions.pin(root / "m"))  # a reader keeps it in use
        upload_generation(s3, 4)
        svc.wait("disk_full reported", lambda: "sync error (disk_full)" in svc.log("model-sync"))
        assert generation(root / "m") == 3  # the previous version keeps serving
        leases.close()  # the readers are done: GC may free their versions now
        svc.wait("generation 4 published by itself", lambda: generation(root / "m") == 4)
        svc.wait("old versions collected", lambda: len(versions.list_versions(root, "m")) == 1)
