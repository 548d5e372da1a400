"""The shared volume contract: atomic publish, identity-cached hashing, locks, temp names."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from a2f_volume.hashing import HashCache, sha256_file
from a2f_volume.layout import is_temp_name, list_model_dirs, temp_name
from a2f_volume.lock import FileLock
from a2f_volume.publish import atomic_write_bytes, atomic_writer


def test_atomic_writer_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    dest = tmp_path / "network.trt"
    atomic_write_bytes(dest, b"old")
    with pytest.raises(RuntimeError), atomic_writer(dest) as f:
        f.write(b"new but partial")
        raise RuntimeError("build failed")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["network.trt"]


def _slow_writer(dest: str) -> None:
    with atomic_writer(dest) as f:
        for _ in range(1000):
            f.write(b"x" * 4096)
            time.sleep(0.001)


def test_killed_writer_never_exposes_a_partial_file(tmp_path: Path) -> None:
    dest = tmp_path / "network.ort"
    atomic_write_bytes(dest, b"complete")
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_slow_writer, args=(str(dest),))
    proc.start()
    deadline = time.monotonic() + 60
    while not any(p.name != "network.ort" and p.stat().st_size > 0 for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.01)  # poll: the spawned writer may take long to start on a busy machine
    os.kill(proc.pid or 0, signal.SIGKILL)
    proc.join()
    assert dest.read_bytes() == b"complete"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "network.ort"]
    assert leftovers and all(is_temp_name(n) for n in leftovers)


def test_hash_cache_reuses_digest_until_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "network.onnx"
    f.write_bytes(b"a" * 1000)
    cache = HashCache(tmp_path / "cache.json")
    first = cache.sha256(f)
    assert first == sha256_file(f)
    cache.save()
    st = os.stat(f)
    # Same size, forged (older) mtime: ctime still moves, so the digest is recomputed.
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    reloaded = HashCache(tmp_path / "cache.json")
    assert reloaded.sha256(f) == sha256_file(f) != first


def test_hash_cache_persists_across_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "network.onnx"
    f.write_bytes(os.urandom(4096))
    cache = HashCache(tmp_path / "cache.json")
    digest = cache.sha256(f)
    cache.save()
    import a2f_volume.hashing as hashing

    def no_hashing(_: object) -> str:
        raise AssertionError("hashed again although the file identity is unchanged")

    monkeypatch.setattr(hashing, "sha256_file", no_hashing)
    assert HashCache(tmp_path / "cache.json").sha256(f) == digest


def test_exclusive_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "a23.build.lock"
    with FileLock(path):
        assert FileLock(path).acquire(blocking=False) is False
    other = FileLock(path)
    assert other.acquire(blocking=False) is True
    other.release()


def test_temp_names_of_common_tools_are_recognised() -> None:
    assert is_temp_name(temp_name("network.onnx"))
    assert is_temp_name("network.onnx.a1B2c3D4")  # aws s3 sync
    assert is_temp_name("network.onnx123456")  # s5cmd
    assert is_temp_name("model.json.partial")
    assert not is_temp_name("network.onnx")
    assert not is_temp_name("bs_skin_Claire.npz")
    assert not is_temp_name("model_config_James.json")


def test_model_discovery_skips_state_and_hidden_dirs(models_root: Path) -> None:
    for name in ("a23", ".a2f", ".hidden"):
        (models_root / name).mkdir()
        (models_root / name / "model.json").write_text("{}")
    (models_root / "no-model").mkdir()
    assert [p.name for p in list_model_dirs(models_root)] == ["a23"]
