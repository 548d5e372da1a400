"""Faults that must not block the volume: a corrupt version record, bad or reserved keys in
the source, a full disk. Real S3 server (moto) on loopback, real files, a real tmpfs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from a2f_volume import versions
from a2f_volume.layout import VERSION_RECORD, versions_dir

from .conftest import make_sync, model_files, read_consistent, upload_model

pytestmark = pytest.mark.s3
PREFIX = "a2f-models/"


def src(bucket: str) -> str:
    return f"s3://{bucket}/{PREFIX}"


def test_corrupt_record_of_one_model_does_not_block_another(
        s3: Any, bucket: str, moto_url: str, models_root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    upload_model(s3, bucket, PREFIX, "m1", model_files(1, seed=1))
    upload_model(s3, bucket, PREFIX, "m2", model_files(1, seed=2))
    sync, registry = make_sync(models_root, src(bucket), moto_url)
    try:
        assert sync.run().matched
        record = versions.version_dir_of(models_root / "m1")
        assert record is not None
        (record / VERSION_RECORD).write_text("{not json")  # a damaged record
        upload_model(s3, bucket, PREFIX, "m2", model_files(2, seed=2))
        caplog.set_level(logging.WARNING)
        report = sync.run()
        assert report.matched, report.errors
        assert read_consistent(models_root / "m2") == 2  # m2 updated
        assert read_consistent(models_root / "m1") == 1  # m1 republished from the source
        assert versions.read_record(models_root / "m1") is not None
        warnings = [r.getMessage() for r in caplog.records if "republishing" in r.getMessage()]
        assert len(warnings) == 1 and "m1" in warnings[0], warnings
        assert registry.get_sample_value("a2f_model_sync_errors_total",
                                         {"kind": "bad_record"}) == 1
    finally:
        sync.source.close()


def test_reserved_engine_and_bad_keys_are_skipped_once_and_never_republish(
        s3: Any, bucket: str, moto_url: str, models_root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    files = model_files(1)
    upload_model(s3, bucket, PREFIX, "m", files)
    odd = {
        f"{PREFIX}m/{VERSION_RECORD}": "reserved_name",
        f"{PREFIX}m/network.ort": "engine_output",
        f"{PREFIX}m/network.trt.json": "engine_output",
        f"{PREFIX}m/nul\x00name": "bad_key",
    }
    for key in odd:
        s3.put_object(Bucket=bucket, Key=key, Body=b"not a model file")
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX)["Contents"]}
    assert set(odd) <= listed, "the S3 server did not store every odd key"
    caplog.set_level(logging.WARNING)
    sync, registry = make_sync(models_root, src(bucket), moto_url)
    try:
        first = sync.run()
        assert first.matched, first.errors
        vid = versions.current_version(models_root / "m")
        for _ in range(4):  # 5 passes in all: nothing is published again
            report = sync.run()
            assert report.matched and not report.published, report
        assert versions.current_version(models_root / "m") == vid
        assert len(list(versions_dir(models_root, "m").iterdir())) == 1
        folder = models_root / "m"
        assert not (folder / "network.ort").exists() and not (folder / "nul").exists()
        assert read_consistent(folder) == 1
        skipped = [r.getMessage() for r in caplog.records
                   if r.getMessage().startswith("skipping source object")]
        assert len(skipped) == len(odd), skipped  # one warning each, over 5 passes
        for key, reason in odd.items():
            assert sum(repr(key) in m and f"({reason})" in m for m in skipped) == 1, key
        for reason in ("reserved_name", "engine_output", "bad_key"):
            assert registry.get_sample_value("a2f_model_sync_skipped_objects_total",
                                             {"reason": reason}) == sum(
                r == reason for r in odd.values())
    finally:
        sync.source.close()


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs: a volume that fills up for real."""
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


def test_full_disk_recovers_by_itself_once_gc_can_free_space(
        s3: Any, bucket: str, moto_url: str, small_volume: Path) -> None:
    root = small_volume / "models"

    def generation(gen: int) -> dict[str, bytes]:  # ~6 MiB of unique bytes per generation
        return model_files(gen, n_files=2, size=3 << 20, seed=7)

    # Three generations published while old versions are young (grace 1 h, keep 2): the
    # volume holds three versions and cannot take a fourth plus the safety margin.
    sync, _ = make_sync(root, src(bucket), moto_url, grace_s=3600.0, keep_versions=2)
    try:
        for gen in (1, 2, 3):
            upload_model(s3, bucket, PREFIX, "m", generation(gen))
            assert sync.run().matched
        assert len(versions.list_versions(root, "m")) == 3
        upload_model(s3, bucket, PREFIX, "m", generation(4))
        report = sync.run()
        assert [k for k, _ in report.errors] == ["disk_full"], report.errors
        assert read_consistent(root / "m") == 3  # the previous version keeps serving
    finally:
        sync.source.close()
    # The old versions expire (here: a shorter grace) and are not leased: the next pass frees
    # them before it downloads, and publishes, with no hand action.
    sync, _ = make_sync(root, src(bucket), moto_url, grace_s=0.0, keep_versions=2)
    try:
        report = sync.run()
        assert report.matched, report.errors
        assert read_consistent(root / "m") == 4
        assert len(versions.list_versions(root, "m")) == 1
        assert shutil.disk_usage(root).free > 16 << 20
    finally:
        sync.source.close()
