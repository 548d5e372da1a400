"""Leases through a read-only mount: the inference container mounts the model volume
read-only, model-sync (writable) creates every version's lease file, and its garbage
collection still sees the reader's shared lock.

Real files, a real S3-compatible server (moto) and real ``flock``s. The read-only view is a
read-only bind mount of the volume when running as root (as the pod's two mounts of one
volume); otherwise the version directories are made read-only with ``chmod``.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from a2f_volume import versions
from a2f_volume.layout import LEASE_FILE, versions_dir
from a2f_volume.leases import ensure_lease_files, open_lease

from .conftest import model_files, read_consistent, sync_once, upload_model


@dataclass
class Volume:
    """One volume seen twice: ``rw`` (model-sync's mount) and ``ro`` (inference's mount)."""

    rw: Path
    ro: Path
    how: str
    lock_down: Callable[[Path], None]


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Volume]:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    if os.geteuid() == 0:
        if shutil.which("mount") is None:
            pytest.skip("running as root but no mount command: cannot make a read-only view")
        bound = _mount("--bind", str(rw), str(ro))
        if bound.returncode != 0:
            pytest.skip(f"running as root but bind mounts are not allowed here: "
                        f"{bound.stderr.strip()}")
        try:
            remount = _mount("-o", "remount,ro,bind", str(ro))
            if remount.returncode != 0:
                pytest.skip(f"cannot remount the bind mount read-only: {remount.stderr.strip()}")
            yield Volume(rw, ro, "bind", lambda _p: None)
        finally:
            subprocess.run(["umount", str(ro)], capture_output=True, timeout=30, check=True)
        return
    locked: list[Path] = []

    def lock_down(path: Path) -> None:  # not root: chmod does bind the reader
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
        locked.append(path)

    try:
        yield Volume(rw, rw, "chmod", lock_down)
    finally:
        for p in locked:
            if p.exists():
                p.chmod(0o755)


def _read_only(path: Path) -> bool:
    try:
        fd = os.open(path / ".probe", os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError:
        return True
    os.close(fd)
    os.unlink(path / ".probe")
    return False


def test_a_reader_on_a_read_only_mount_leases_and_gc_keeps_the_leased_version(
        volume: Volume, s3: Any, bucket: str, moto_url: str) -> None:
    source = f"s3://{bucket}/models/"
    upload_model(s3, bucket, "models/", "m", model_files(1))
    assert sync_once(volume.rw, source, moto_url, grace_s=0, keep_versions=0).result == "success"
    v1 = versions.current_version(volume.rw / "m")
    v1_dir = versions_dir(volume.rw, "m") / v1
    assert (v1_dir / LEASE_FILE).is_file()  # created by the sync with the version
    volume.lock_down(v1_dir)
    reader_v1 = versions_dir(volume.ro, "m") / v1
    assert _read_only(reader_v1)

    with versions.pin(volume.ro / "m") as pinned:  # what the inference server does
        assert pinned == reader_v1.resolve()
        assert versions.is_leased(v1_dir)
        upload_model(s3, bucket, "models/", "m", model_files(2))
        report = sync_once(volume.rw, source, moto_url, grace_s=0, keep_versions=0)
        assert report.result == "success" and report.published
        assert versions.current_version(volume.rw / "m") != v1
        assert v1_dir.is_dir()  # leased: GC kept it although grace 0 and keep 0
        assert read_consistent(pinned) == 1  # and every file of it stays readable
        assert read_consistent(volume.ro / "m") == 2
    if volume.how == "chmod":
        v1_dir.chmod(0o755)  # GC removes files inside; a bind mount needs no help
    sync_once(volume.rw, source, moto_url, grace_s=0, keep_versions=0)
    assert not v1_dir.exists()  # the lease is gone, so is the old version


def test_missing_lease_files_are_created_for_existing_versions(
        volume: Volume, s3: Any, bucket: str, moto_url: str) -> None:
    source = f"s3://{bucket}/models/"
    upload_model(s3, bucket, "models/", "m", model_files(1))
    sync_once(volume.rw, source, moto_url)
    vdir = versions.version_dir_of(volume.rw / "m")
    assert vdir is not None
    (vdir / LEASE_FILE).unlink()  # a version published before lease files existed
    assert ensure_lease_files(volume.rw) == 1
    lease = vdir / LEASE_FILE
    assert stat.S_IMODE(lease.stat().st_mode) == 0o644
    (vdir / LEASE_FILE).unlink()
    sync_once(volume.rw, source, moto_url)  # nothing to download; the pass still adds it
    assert lease.is_file()
    assert ensure_lease_files(volume.rw) == 0


def test_no_lease_file_and_no_write_access_reads_unleased_with_a_warning(
        volume: Volume, s3: Any, bucket: str, moto_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    upload_model(s3, bucket, "models/", "m", model_files(1))
    sync_once(volume.rw, f"s3://{bucket}/models/", moto_url)
    vdir = versions.version_dir_of(volume.rw / "m")
    assert vdir is not None
    (vdir / LEASE_FILE).unlink()
    volume.lock_down(vdir)
    with pytest.raises(OSError):
        open_lease(versions_dir(volume.ro, "m") / vdir.name / LEASE_FILE)
    with caplog.at_level(logging.WARNING, logger="a2f_volume.leases"), \
            versions.pin(volume.ro / "m") as pinned:
        assert read_consistent(pinned) == 1
    assert any("cannot lease version" in r.getMessage() and "mount the volume writable"
               in r.getMessage() for r in caplog.records)
