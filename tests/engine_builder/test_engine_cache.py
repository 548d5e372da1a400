"""The shared engine cache: engine-builders on separate volumes and one real S3 server (moto on
loopback). The first builds and uploads, the next downloads, verifies and publishes without
building; a corrupted or poisoned entry is rejected and rebuilt, never published; an S3
outage degrades to a local build."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from s3_fixtures import AWS_ENV, free_port, moto_server, s3_client

from a2f_engine_builder.backends import OnnxRuntimeBackend
from a2f_engine_builder.builder import EngineBuilder
from a2f_engine_builder.engine_cache import EngineCacheError, RemoteEngineCache, parse_cache_url
from a2f_volume.engine_record import check_engine, read_record
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths

from .helpers import builder_for, make_model, run_builder

pytestmark = pytest.mark.s3

ORT = "onnxruntime"


@dataclass
class S3:
    """The S3 server under test and a fresh bucket (moto keeps its state per process, so
    every test gets a bucket of its own)."""

    endpoint: str
    client: Any
    bucket: str

    @property
    def cache(self) -> str:
        return f"s3://{self.bucket}/a2f/engine-cache"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    with moto_server() as endpoint:
        env = S3(endpoint, s3_client(endpoint), f"engines-{uuid.uuid4().hex[:12]}")
        env.client.create_bucket(Bucket=env.bucket)
        yield env


def _volume(tmp_path: Path, name: str, seed: int = 0) -> Path:
    root = tmp_path / name
    root.mkdir()
    make_model(root, "mark", seed=seed)
    return root


def _record(root: Path) -> dict[str, Any]:
    paths = ModelPaths(root / "mark")
    assert check_engine(paths, ORT, OnnxRuntimeBackend().target(paths.folder),
                        HashCache()).valid
    return read_record(paths.engine_record(ORT)).to_json()


def _entry(s3: S3) -> tuple[str, dict[str, Any]]:
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]]
    (rec_key,) = [k for k in keys if k.endswith("/record.json")]
    doc = json.loads(s3.client.get_object(Bucket=s3.bucket, Key=rec_key)["Body"].read())
    return rec_key, doc


def _cli(root: Path, s3: S3) -> tuple[int, str]:
    proc = run_builder(root, "--once", "--engine-cache", s3.cache,
                       "--engine-cache-endpoint-url", s3.endpoint, **AWS_ENV)
    return proc.returncode, proc.stderr


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_second_volume_downloads_verifies_and_publishes_without_building(
        tmp_path: Path, s3: S3) -> None:
    first, second = _volume(tmp_path, "vol-a"), _volume(tmp_path, "vol-b")

    rc, log = _cli(first, s3)
    assert rc == 0, log
    assert "Building ORT from ONNX: mark" in log
    rec_a = _record(first)
    assert rec_a["source"] == "build"
    rec_key, doc = _entry(s3)
    assert doc["record"]["engine_sha256"] == rec_a["engine_sha256"]
    assert rec_key.startswith("a2f/engine-cache/onnxruntime/" + rec_a["onnx_sha256"])
    head = s3.client.head_object(Bucket=s3.bucket, Key=doc["engine_key"])
    assert head["ContentLength"] == rec_a["engine_size"]
    assert not [o for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]
                if o["Key"].endswith("lease.json")], "the lease was not released"

    rc, log = _cli(second, s3)
    assert rc == 0, log
    assert "Building ORT" not in log
    assert "verified and installed" in log
    rec_b = _record(second)
    assert rec_b["source"] == "cache"
    assert rec_b["engine_sha256"] == rec_a["engine_sha256"]
    assert rec_b["verification"]["max_abs_error"] <= rec_b["verification"]["atol"] * 10


def _poison(s3: S3, other_root: Path) -> tuple[str, dict[str, Any]]:
    """Replace the cached engine with another model's engine under a consistent record: only
    verification against the ONNX can tell."""
    rec_key, doc = _entry(s3)
    other = ModelPaths(other_root / "mark")
    data = other.engine(ORT).read_bytes()
    other_rec = read_record(other.engine_record(ORT))
    assert other_rec.engine_sha256 != doc["record"]["engine_sha256"]
    s3.client.put_object(Bucket=s3.bucket, Key=doc["engine_key"], Body=data)
    doc["record"].update(engine_sha256=other_rec.engine_sha256, engine_size=len(data))
    s3.client.put_object(Bucket=s3.bucket, Key=rec_key, Body=json.dumps(doc).encode())
    return rec_key, doc


def test_poisoned_entry_fails_verification_is_rebuilt_and_replaced(
        tmp_path: Path, s3: S3) -> None:
    first = _volume(tmp_path, "vol-a")
    other = _volume(tmp_path, "other", seed=7)  # same interface, other weights; no cache
    assert run_builder(other, "--once").returncode == 0
    assert _cli(first, s3)[0] == 0
    _, poisoned = _poison(s3, other)

    third = _volume(tmp_path, "vol-c")
    builder = builder_for(third)
    builder.remote_cache = RemoteEngineCache(s3.cache, builder.metrics.registry,
                                             client=s3_client(s3.endpoint))
    outcome = builder.ensure(third / "mark")
    assert outcome.result == "built", outcome
    reg = builder.metrics.registry
    assert _value(reg, "a2f_engine_builder_engine_cache_lookups_total", result="rejected") == 1
    assert _value(reg, "a2f_engine_builder_engine_cache_lookups_total", result="hit") == 0
    rec = _record(third)
    assert rec["source"] == "build"
    assert rec["engine_sha256"] != poisoned["record"]["engine_sha256"]
    # The rebuilt engine replaced the poisoned entry.
    _, doc = _entry(s3)
    assert doc["record"]["engine_sha256"] == rec["engine_sha256"]
    assert _value(reg, "a2f_engine_builder_engine_cache_uploads_total", result="uploaded") == 1


def test_corrupted_bytes_are_rejected_before_loading(tmp_path: Path,
                                                     s3: S3) -> None:
    assert _cli(_volume(tmp_path, "vol-a"), s3)[0] == 0
    _, doc = _entry(s3)
    body = bytearray(s3.client.get_object(Bucket=s3.bucket, Key=doc["engine_key"])["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size, other bytes
    s3.client.put_object(Bucket=s3.bucket, Key=doc["engine_key"], Body=bytes(body))

    second = _volume(tmp_path, "vol-b")
    rc, log = _cli(second, s3)
    assert rc == 0, log
    assert "rejected the cached engine" in log and "does not match the record" in log
    assert "Building ORT from ONNX: mark" in log
    assert _record(second)["source"] == "build"


class GatedBackend(OnnxRuntimeBackend):
    """The real ONNX Runtime backend whose build waits for the test's signal (a fake gate,
    so that a second builder provably arrives while the first one builds)."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.building = threading.Event()
        self.release = threading.Event()
        self.builds = 0

    def build(self, onnx: Path, folder: Path, out: Path, timing_cache_dir: Path
              ) -> dict[str, object]:
        self.builds += 1
        self.building.set()
        assert self.release.wait(60), "the test never released the build"
        return super().build(onnx, folder, out, timing_cache_dir)


def _poll(what: str, cond: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_concurrent_builders_build_once_and_the_waiter_downloads(
        tmp_path: Path, s3: S3) -> None:
    builders: list[tuple[EngineBuilder, GatedBackend]] = []
    for name in ("vol-a", "vol-b"):
        backend = GatedBackend()
        b = builder_for(_volume(tmp_path, name), backend=backend)
        b.remote_cache = RemoteEngineCache(s3.cache, b.metrics.registry,
                                           client=s3_client(s3.endpoint), poll_s=0.05)
        builders.append((b, backend))
    (a, gate_a), (b, gate_b) = builders
    results: dict[str, str] = {}
    t_a = threading.Thread(target=lambda: results.update(a=a.ensure(a.models_root / "mark")
                                                         .result))
    t_a.start()
    assert gate_a.building.wait(60)
    t_b = threading.Thread(target=lambda: results.update(b=b.ensure(b.models_root / "mark")
                                                         .result))
    t_b.start()
    _poll("the second builder to wait for the lease", lambda: _value(
        b.metrics.registry, "a2f_engine_builder_engine_cache_lease_waits_total") == 1)
    gate_a.release.set()
    gate_b.release.set()  # would let a second build run: it must not be reached
    t_a.join(60)
    t_b.join(60)
    assert results == {"a": "built", "b": "reused"}
    assert (gate_a.builds, gate_b.builds) == (1, 0)
    assert _record(b.models_root)["source"] == "cache"


def test_s3_outage_degrades_to_a_local_build(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    root = _volume(tmp_path, "vol-a")
    builder = builder_for(root)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=dead, region_name="us-east-1", config=Config(
        retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2))
    builder.remote_cache = RemoteEngineCache("s3://engines/a2f/engine-cache",
                                             builder.metrics.registry, client=client)
    outcome = builder.ensure(root / "mark")
    assert outcome.result == "built", outcome
    assert _record(root)["source"] == "build"
    reg = builder.metrics.registry
    assert _value(reg, "a2f_engine_builder_engine_cache_errors_total", op="lookup") == 1
    # S3 did not answer the lookup: no lease attempt (no further wait), only the upload try.
    assert _value(reg, "a2f_engine_builder_engine_cache_errors_total", op="lease") == 0
    assert _value(reg, "a2f_engine_builder_engine_cache_uploads_total", result="error") == 1


def test_cache_url_is_checked() -> None:
    assert parse_cache_url("s3://b/p/q/") == ("b", "p/q/")
    assert parse_cache_url("s3://b") == ("b", "")
    for bad in ("b/p", "https://b/p", "s3:///p"):
        with pytest.raises(EngineCacheError, match="s3://BUCKET/PREFIX"):
            parse_cache_url(bad)
    proc = run_builder(Path("/nonexistent"), "--once", "--engine-cache", "gs://x/y")
    assert proc.returncode == 2 and "s3://BUCKET/PREFIX" in proc.stderr


def test_a_diffusion_serving_graph_engine_is_shared_under_its_composition(
        tmp_path: Path, s3: S3) -> None:
    """A diffusion model is built as its composed serving graph: the cache key carries the
    composition (not the ONNX hash alone), and the second builder verifies the download as a
    serving graph and publishes it with the same composition."""
    vols = []
    for name in ("vol-a", "vol-b"):
        root = tmp_path / name
        root.mkdir()
        make_model(root, "mark", kind="diffusion")
        vols.append(root)
    first, second = vols

    rc, log = _cli(first, s3)
    assert rc == 0, log
    rec_a = _record(first)
    assert rec_a["source"] == "build" and rec_a["serving_graph"], rec_a
    rec_key, doc = _entry(s3)
    assert not rec_key.startswith("a2f/engine-cache/onnxruntime/" + rec_a["onnx_sha256"])
    assert doc["record"]["serving_graph"] == rec_a["serving_graph"]

    rc, log = _cli(second, s3)
    assert rc == 0, log
    assert "Building ORT" not in log and "verified and installed" in log
    rec_b = _record(second)
    assert rec_b["source"] == "cache"
    assert rec_b["serving_graph"] == rec_a["serving_graph"]
    assert rec_b["engine_sha256"] == rec_a["engine_sha256"]
