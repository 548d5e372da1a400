"""deploy/compose/seed_s3.py (the compose stack's s3-seed job) against a real S3 server
(moto) on loopback: it fills an empty prefix once and never overwrites existing models."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from .conftest import ROOT, run

SCRIPT = ROOT / "deploy/compose/seed_s3.py"


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its state per process: start each test from an empty store.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"),
                           timeout=10).close()
    try:
        yield endpoint
    finally:
        server.stop()


def _env(endpoint: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"A2F_S3_ENDPOINT_URL": endpoint, "A2F_S3_BUCKET": "avadot",
                "A2F_S3_PREFIX": "a2f-models", "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})
    env.update(extra)
    return env


def _keys(endpoint: str) -> dict[str, str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    objs = s3.list_objects_v2(Bucket="avadot").get("Contents", [])
    return {o["Key"]: o["ETag"] for o in objs}


@pytest.mark.s3
def test_seed_fills_an_empty_prefix_once_and_then_leaves_it(s3_endpoint: str) -> None:
    run([sys.executable, str(SCRIPT)], env=_env(s3_endpoint), timeout=120)
    first = _keys(s3_endpoint)
    assert "a2f-models/multi-diffusion/model.json" in first
    assert "a2f-models/multi-diffusion/network.onnx" in first
    # compose.yaml promises both stand-ins.
    assert "a2f-models/a23/model.json" in first and "a2f-models/a23/network.onnx" in first
    proc = run([sys.executable, str(SCRIPT)], env=_env(s3_endpoint, A2F_STANDIN_SIZE="full"),
               timeout=120)
    assert "leaving them as they are" in proc.stderr
    assert _keys(s3_endpoint) == first


@pytest.mark.s3
def test_seed_without_standins_only_creates_the_bucket(s3_endpoint: str) -> None:
    proc = run([sys.executable, str(SCRIPT)], env=_env(s3_endpoint, A2F_SEED_STANDIN="0"),
               timeout=120)
    assert _keys(s3_endpoint) == {}
    assert "A2F_SEED_STANDIN=0" in proc.stderr
