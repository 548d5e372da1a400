"""Two inference replicas (compose.replicas.yaml): the streams of ONE gRPC channel
(``dns:///inference:50051``, ``round_robin``) land on both replicas.

Needs the images and the running CPU stack of the deployment stage: scripts/ci-deploy.sh
runs this module with A2F_CI_COMPOSE_PROJECT and A2F_CI_COMPOSE_FILES set (in `make test`
it is skipped for want of a Docker engine with those images)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from .conftest import ROOT, run

pytestmark = pytest.mark.docker

STREAMS = 20
MIN_PER_REPLICA = 5


def _compose() -> tuple[list[str], dict[str, str]]:
    project = os.environ.get("A2F_CI_COMPOSE_PROJECT")
    files = os.environ.get("A2F_CI_COMPOSE_FILES")
    if not project or not files:
        pytest.skip("runs in the deployment stage: scripts/ci-deploy.sh builds the images, "
                    "brings up the stack and sets A2F_CI_COMPOSE_PROJECT/_FILES")
    exe = shutil.which("docker-compose")
    assert exe is not None, "docker-compose not found"
    cmd = [exe, "-p", project]
    for f in [*files.split(":"), "compose.replicas.yaml"]:
        cmd += ["-f", f]
    env = dict(os.environ)
    env.update(A2F_GRPC_PORT="", A2F_METRICS_PORT="")  # one free host port per replica
    return cmd, env


def _healthy_replicas(cmd: list[str], env: dict[str, str]) -> int:
    ids = run([*cmd, "ps", "-q", "inference"], env=env).stdout.split()
    healthy = 0
    for cid in ids:
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", cid],
            capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        assert not state.startswith(("exited", "dead")), f"replica {cid[:12]}: {state}"
        healthy += state == "running healthy"
    return healthy


def test_streams_of_one_channel_land_on_both_replicas() -> None:
    cmd, env = _compose()
    run([*cmd, "up", "-d", "--no-build", "--scale", "inference=2", "inference"], env=env,
        timeout=300)
    deadline = time.monotonic() + 600
    while _healthy_replicas(cmd, env) < 2:
        assert time.monotonic() < deadline, "two healthy inference replicas after 600 s"
        time.sleep(2)
    proc = run([*cmd, "--profile", "check", "run", "--rm", "replica-check", "--service",
                "inference", "--replicas", "2", "--streams", str(STREAMS),
                "--min-per-replica", str(MIN_PER_REPLICA)], env=env, timeout=600)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"streams per replica over one channel: {report}")
    assert report["target"] == "dns:///inference:50051"
    assert report["ok"] == STREAMS
    served = report["replicas"]
    assert len(served) == 2, served
    assert all(n >= MIN_PER_REPLICA for n in served.values()), served
    assert sum(served.values()) == STREAMS, served
    assert (ROOT / "compose.replicas.yaml").is_file()
