"""The version/lease contract of ``a2f_volume.versions`` on real files and real flocks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from a2f_volume import versions
from a2f_volume.layout import versions_dir


def publish(root: Path, model: str, content: bytes, published_at: float) -> str:
    """A version directory as the sync builds it, then the switch."""
    rec = versions.ObjectRecord(path="model.json", key=f"p/{model}/model.json",
                                size=len(content), etag='"e"')
    vid = versions.new_version_id([rec], now=published_at)
    vdir = versions_dir(root, model) / vid
    vdir.mkdir(parents=True)
    (vdir / "model.json").write_bytes(content)
    versions.write_record(vdir, versions.VersionRecord(vid, model, "s3://b/p/", published_at,
                                                       (rec,)))
    versions.switch(root, model, vid)
    return vid


def test_switch_replaces_the_symlink_and_model_json_stays_valid(models_root: Path) -> None:
    v1 = publish(models_root, "m", b"1", time.time())
    assert (models_root / "m" / "model.json").read_bytes() == b"1"
    v2 = publish(models_root, "m", b"2", time.time())
    assert (models_root / "m" / "model.json").read_bytes() == b"2"
    assert versions.current_version(models_root / "m") == v2 != v1
    assert not [n for n in os.listdir(models_root) if n.startswith(".m")]  # no temp links


def test_switch_refuses_to_replace_a_plain_directory(models_root: Path) -> None:
    (models_root / "m").mkdir()
    (models_root / "m" / "model.json").write_text("{}")
    vdir = versions_dir(models_root, "m") / "v1"
    vdir.mkdir(parents=True)
    with pytest.raises(versions.VersionError, match=r"plain directory.*--adopt"):
        versions.switch(models_root, "m", "v1")
    assert (models_root / "m" / "model.json").read_text() == "{}"


def test_adopt_moves_a_plain_folder_into_versions_keeping_its_files(models_root: Path) -> None:
    plain = models_root / "m"
    plain.mkdir()
    (plain / "model.json").write_text("{}")
    (plain / "sub").mkdir()
    (plain / "sub" / "a.npz").write_bytes(b"a")
    before = versions.current_version(plain)
    vid = versions.adopt(models_root, "m")
    assert versions.is_managed(plain)
    assert (plain / "sub" / "a.npz").read_bytes() == b"a"
    assert versions.current_version(plain) == vid and before in vid


def test_current_version_of_a_plain_folder_ignores_engines_and_tracks_model_files(
        models_root: Path) -> None:
    plain = models_root / "m"
    plain.mkdir()
    (plain / "model.json").write_text("{}")
    (plain / "network.onnx").write_bytes(b"x" * 10)
    v1 = versions.current_version(plain)
    assert v1.startswith("local-") and versions.current_version(plain) == v1
    (plain / "network.trt").write_bytes(b"engine")
    (plain / "network.trt.json").write_text("{}")
    (plain / ".gpu_arch").write_text("sm_75")
    assert versions.current_version(plain) == v1
    (plain / "network.onnx").write_bytes(b"y" * 10)
    os.utime(plain / "network.onnx", ns=(1, 1))
    assert versions.current_version(plain) != v1
    with pytest.raises(versions.VersionError, match="does not exist"):
        versions.current_version(models_root / "absent")


def test_gc_keeps_current_young_and_leased_versions(models_root: Path) -> None:
    t = time.time()
    old = [publish(models_root, "m", f"{i}".encode(), t - 3600 + i) for i in range(4)]
    current = publish(models_root, "m", b"cur", t)
    leased_dir = versions_dir(models_root, "m") / old[0]
    with versions.pin(models_root / "m") as real:
        assert real.name == current
    # a lease held by another process on the oldest version
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
        "fcntl.flock(fd,fcntl.LOCK_SH);print('held',flush=True);time.sleep(60)"),
        str(leased_dir / versions.LEASE_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert versions.is_leased(leased_dir)
        removed = versions.collect_garbage(models_root, "m", keep=1, grace_s=600, now=t)
        # old[3] was superseded at t (by current): young, kept (keep=1); old[1], old[2] go;
        # old[0] is leased and stays
        assert sorted(removed) == sorted([old[1], old[2]])
        assert leased_dir.is_dir()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # the holder died (like kill -9): the kernel dropped its lease
    removed = versions.collect_garbage(models_root, "m", keep=0, grace_s=0, now=t + 1)
    assert sorted(removed) == sorted([old[0], old[3]])
    assert [d.name for d, _ in versions.list_versions(models_root, "m")] == [current]
    assert (models_root / "m" / "model.json").read_bytes() == b"cur"


def test_pin_follows_a_switch_and_holds_the_version_it_resolved(models_root: Path) -> None:
    t = time.time()
    v1 = publish(models_root, "m", b"1", t - 10)
    with versions.pin(models_root / "m") as real:
        v2 = publish(models_root, "m", b"2", t)
        assert versions.collect_garbage(models_root, "m", keep=0, grace_s=0) == []
        assert (real / "model.json").read_bytes() == b"1" and real.name == v1
    assert versions.collect_garbage(models_root, "m", keep=0, grace_s=0) == [v1]
    with versions.pin(models_root / "m") as real:
        assert real.name == v2


def test_pin_of_a_plain_folder_yields_it_without_a_lease(models_root: Path) -> None:
    plain = models_root / "m"
    plain.mkdir()
    with versions.pin(plain) as real:
        assert real == plain
    assert not (plain / versions.LEASE_FILE).exists()


def test_verify_file_rejects_bytes_that_fail_the_etag_or_a_checksum(tmp_path: Path) -> None:
    import base64
    import hashlib
    import zlib

    from a2f_model_sync.checksums import Digests, verify_file
    from a2f_model_sync.source import SourceError

    data = b"network bytes" * 1000
    path = tmp_path / "network.onnx"
    path.write_bytes(data)
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    digests = Digests(("SHA256",))
    digests.update(data)
    for d in (None, digests):  # re-read from disk, and computed while streaming
        verify_file(path, {"CRC32": crc, "SHA256": sha}, etag, md5_is_etag=True, digests=d)
        with pytest.raises(SourceError, match="fail the SHA256 check") as err:
            verify_file(path, {"SHA256": sha[:-4] + "AAA="}, etag, md5_is_etag=True, digests=d)
        assert err.value.kind == "checksum"
        with pytest.raises(SourceError, match="fail the MD5 check"):
            verify_file(path, {}, '"' + "0" * 32 + '"', md5_is_etag=True, digests=d)
    # an SSE-KMS object's ETag is not an MD5: not compared
    verify_file(path, {}, '"' + "0" * 32 + '"', md5_is_etag=False)
