"""S3 down at pod start: model-sync reports ready from a complete volume, inference serves,
and the next change is published once S3 is back. Real processes, a real S3 server (moto) on
loopback that is stopped and started again on the same port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import AWS_ENV, free_port, s3_client
from volume_services import grpc_serving, http_status, http_text, metric, services

from a2f_standin import generate
from a2f_volume import versions

pytestmark = pytest.mark.s3
PREFIX = "a2f-models/"
BUCKET = "models"


class Moto:
    """moto's S3 server on a fixed loopback port that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> Any:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        s3 = s3_client(self.url)
        s3.create_bucket(Bucket=BUCKET)
        return s3

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture
def moto() -> Iterator[Moto]:
    m = Moto()
    try:
        yield m
    finally:
        m.stop()


def upload(s3: Any, folder: Path, model: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}{model}/{path.relative_to(folder)}",
                      Body=path.read_bytes())


def test_s3_down_at_start_with_complete_volume_is_ready_and_serving_then_catches_up(
        tmp_path: Path, moto: Moto) -> None:
    root = tmp_path / "models"
    root.mkdir()
    gen1 = generate("regression", tmp_path / "gen1", size="small", seed=1)
    gen2 = generate("regression", tmp_path / "gen2", size="small", seed=2)
    s3 = moto.start()
    upload(s3, gen1, "m")
    env = {**AWS_ENV}
    sync_args = ["a2f-model-sync", "--source", f"s3://{BUCKET}/{PREFIX}", "--dest", str(root),
                 "--endpoint-url", moto.url, "--s3-max-attempts", "1"]
    with services(tmp_path) as svc:  # a first pod fills the volume
        svc.start("sync-once", [*sync_args, "--once"], env)
        assert svc.procs["sync-once"].wait(timeout=120) == 0, svc.log("sync-once")
    first = versions.current_version(root / "m")
    moto.stop()  # S3 outage from here on

    health, grpc_port = free_port(), free_port()
    with services(tmp_path) as svc:
        svc.start("model-sync", [*sync_args, "--interval-s", "1", "--retry-max-s", "1",
                                 "--health-host", "127.0.0.1", "--health-port", str(health)],
                  env)
        svc.wait("model-sync ready with S3 down",
                 lambda: http_status(f"http://127.0.0.1:{health}/ready") == 200, 30)
        svc.wait("the outage in the metrics", lambda: metric(
            http_text(f"http://127.0.0.1:{health}/metrics"),
            "a2f_model_sync_source_up") == 0.0)
        svc.wait("the outage in the log", lambda: "S3 unreachable" in svc.log("model-sync"))
        svc.start("inference", ["a2f-inference", "--models-root", str(root), "--model-path",
                                str(root / "m"), "--host", "127.0.0.1", "--port",
                                str(grpc_port), "--metrics-port", "-1", "--ort-threads", "1"],
                  env)
        svc.wait("inference SERVING from the volume", lambda: grpc_serving(grpc_port))
        assert versions.current_version(root / "m") == first

        s3 = moto.start()  # S3 is back, with a new model version
        upload(s3, gen2, "m")
        # The upload is one object at a time: a pass may publish a version taken mid-upload
        # before the one holding all of gen2, so wait for the content, not for any change.
        wanted = {name: (gen2 / name).read_bytes() for name in ("model.json", "network.onnx")}

        def gen2_published() -> bool:
            folder = (root / "m").resolve()  # one version, however often the link moves
            try:
                return all((folder / n).read_bytes() == data for n, data in wanted.items())
            except FileNotFoundError:  # an older version collected while read: not yet
                return False

        svc.wait("gen2 published", gen2_published)
        assert versions.current_version(root / "m") != first
        svc.wait("source back in the metrics", lambda: metric(
            http_text(f"http://127.0.0.1:{health}/metrics"),
            "a2f_model_sync_source_up") == 1.0)


def test_s3_down_with_an_empty_volume_is_not_ready_and_says_why(
        tmp_path: Path, moto: Moto) -> None:
    root = tmp_path / "models"
    root.mkdir()
    health = free_port()
    with services(tmp_path) as svc:
        svc.start("model-sync", ["a2f-model-sync", "--source", f"s3://{BUCKET}/{PREFIX}",
                                 "--dest", str(root), "--endpoint-url", moto.url,
                                 "--s3-max-attempts", "1", "--interval-s", "1",
                                 "--retry-max-s", "1", "--health-host", "127.0.0.1",
                                 "--health-port", str(health)], AWS_ENV)
        svc.wait("the reason in the log", lambda: "not ready: the volume holds no model yet, "
                 "and the source cannot be reached" in svc.log("model-sync"))
        assert http_status(f"http://127.0.0.1:{health}/ready") == 503
