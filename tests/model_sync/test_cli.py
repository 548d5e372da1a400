"""The ``a2f-model-sync`` process: modes, readiness, signals, configuration, disk full."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from a2f_model_sync.config import SyncConfig
from a2f_volume import versions
from a2f_volume.errors import InvalidArgumentError

from .conftest import (
    free_port,
    make_sync,
    model_files,
    read_consistent,
    staging_leftovers,
    sync_once,
    upload_model,
)

PREFIX = "a2f-models/"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "a2f_model_sync.cli", *args]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        body = err.read().decode()
        err.close()
        return err.code, body
    except (urllib.error.URLError, OSError) as err:
        return 0, str(err)  # not listening yet


def wait_for(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def running(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.mark.s3
def test_daemon_is_ready_after_first_sync_follows_updates_and_stops_on_sigterm(
        s3: Any, bucket: str, moto_url: str, models_root: Path, tmp_path: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(1))
    port = free_port()
    cmd = cli("--source", f"s3://{bucket}/{PREFIX}", "--dest", str(models_root),
              "--endpoint-url", moto_url, "--interval-s", "0.3", "--health-host", "127.0.0.1",
              "--health-port", str(port))
    with running(cmd, tmp_path / "log") as proc:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 30,
                 "the health endpoint")
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/ready")[0] == 200, 30, "ready")
        assert read_consistent(models_root / "m") == 1
        check = subprocess.run(cli("--check-ready", "--health-port", str(port)), timeout=30)
        assert check.returncode == 0
        upload_model(s3, bucket, PREFIX, "m", model_files(2))
        wait_for(lambda: read_consistent(models_root / "m") == 2, 30, "the update")
        _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert 'a2f_model_sync_runs_total{result="success"}' in metrics
        assert "a2f_model_sync_last_success_timestamp_seconds" in metrics
        assert 'a2f_model_sync_model_version_info{model="m",version="' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert staging_leftovers(models_root) == []


@pytest.mark.s3
def test_daemon_is_not_ready_while_the_source_fails_and_logs_the_cause(
        moto_url: str, models_root: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = cli("--source", "s3://absent-bucket/a2f-models/", "--dest", str(models_root),
              "--endpoint-url", moto_url, "--health-host", "127.0.0.1", "--health-port",
              str(port))
    log = tmp_path / "log"
    with running(cmd, log) as proc:
        wait_for(lambda: "no such bucket" in log.read_text(), 30, "the error log line")
        assert http_get(f"http://127.0.0.1:{port}/ready")[0] == 503
        check = subprocess.run(cli("--check-ready", "--health-port", str(port)),
                               capture_output=True, timeout=30)
        assert check.returncode == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    text = log.read_text()
    assert "bucket=absent-bucket" in text and f"endpoint={moto_url}" in text
    assert "credentials=env" in text


@pytest.mark.s3
def test_once_exits_0_when_matched_and_1_when_it_cannot_match(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(1))
    ok = subprocess.run(cli("--once", "--source", f"s3://{bucket}/{PREFIX}", "--dest",
                            str(models_root), "--endpoint-url", moto_url), timeout=120,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert read_consistent(models_root / "m") == 1
    bad = subprocess.run(cli("--once", "--once-attempts", "1", "--source",
                             "s3://absent-bucket/x/", "--dest", str(models_root),
                             "--endpoint-url", moto_url), timeout=120, capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "no such bucket 'absent-bucket'" in bad.stderr


@pytest.mark.s3
def test_sigterm_mid_download_publishes_nothing_and_removes_staging(
        s3: Any, bucket: str, moto_url: str, models_root: Path, tmp_path: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(1, n_files=2, size=8 << 20))
    cmd = cli("--once", "--source", f"s3://{bucket}/{PREFIX}", "--dest", str(models_root),
              "--endpoint-url", moto_url, "--max-bytes-per-s", str(2 << 20))
    log = tmp_path / "log"
    with running(cmd, log) as proc:
        wait_for(lambda: bool(staging_leftovers(models_root)), 30, "the download to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1
    assert not (models_root / "m").exists()
    assert staging_leftovers(models_root) == []


def test_bad_configuration_is_refused_with_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="expected s3://BUCKET/PREFIX"):
        SyncConfig(source="http://x", dest=str(tmp_path))
    with pytest.raises(InvalidArgumentError, match=r"max_concurrency=0 .*between 1 and 64"):
        SyncConfig(source="s3://b/p", max_concurrency=0)
    with pytest.raises(InvalidArgumentError, match="A2F_MODEL_SYNC_INTERVAL_S='soon'"):
        SyncConfig.from_env({"A2F_MODEL_SYNC_SOURCE": "s3://b/p",
                             "A2F_MODEL_SYNC_INTERVAL_S": "soon"})
    cfg = SyncConfig.from_env({"A2F_MODEL_SYNC_SOURCE": "s3://b/p", "A2F_MODEL_DATA_PATH": "/v",
                               "A2F_MODEL_SYNC_DELETE": "true"}, interval_s=5.0)
    assert (cfg.dest, cfg.delete, cfg.interval_s) == ("/v", True, 5.0)
    run = subprocess.run(cli("--source", "ftp://x/", "--dest", str(tmp_path)),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "expected s3://BUCKET/PREFIX or file:///DIR" in run.stderr


def test_file_source_syncs_a_local_tree_and_detects_same_size_changes(
        tmp_path: Path, models_root: Path) -> None:
    tree = tmp_path / "src"
    for path, data in model_files(1).items():
        (tree / "m" / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / "m" / path).write_bytes(data)
    url = f"file://{tree}"
    assert sync_once(models_root, url).matched
    assert read_consistent(models_root / "m") == 1
    for path, data in model_files(2).items():
        if path != "model.json":
            assert len(data) == (tree / "m" / path).stat().st_size
        (tree / "m" / path).write_bytes(data)
    report = sync_once(models_root, url)
    assert report.matched and list(report.published) == ["m"]
    assert read_consistent(models_root / "m") == 2


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs as the models volume (needs mount rights; skipped otherwise)."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                         capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.s3
def test_disk_full_removes_staging_and_keeps_the_previous_version(
        s3: Any, bucket: str, moto_url: str, small_volume: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(1, n_files=2, size=1 << 20))
    assert sync_once(small_volume, f"s3://{bucket}/{PREFIX}", moto_url).matched
    # too large for the volume: refused before downloading anything
    upload_model(s3, bucket, PREFIX, "m", model_files(2, n_files=2, size=20 << 20))
    report = sync_once(small_volume, f"s3://{bucket}/{PREFIX}", moto_url)
    (kind, msg), = report.errors
    assert kind == "disk_full" and "MiB free" in msg
    assert report.objects_downloaded == 0
    # fits at the start, but the disk fills up while it downloads
    upload_model(s3, bucket, PREFIX, "m", model_files(3, n_files=2, size=6 << 20))
    sync, registry = make_sync(small_volume, f"s3://{bucket}/{PREFIX}", moto_url,
                               max_bytes_per_s=8 << 20)

    def fill_disk() -> None:
        wait_for(lambda: bool(staging_leftovers(small_volume)), 30, "the download")
        with contextlib.suppress(OSError), open(small_volume / "ballast", "wb") as f:
            while True:
                f.write(b"\0" * (1 << 20))

    filler = threading.Thread(target=fill_disk)
    filler.start()
    report = sync.run()
    filler.join()
    (kind, msg), = report.errors
    assert kind == "disk_full" and "staging removed" in msg, msg
    assert registry.get_sample_value("a2f_model_sync_errors_total", {"kind": "disk_full"}) == 1
    assert staging_leftovers(small_volume) == []
    assert read_consistent(small_volume / "m") == 1
    assert versions.is_managed(small_volume / "m")
    os.unlink(small_volume / "ballast")
