"""A models root with an entry the services cannot read (a root-owned ``lost+found``, mode
0700, as on a fresh ext4 volume): all three services start, skip it with a warning, and
serve. Real processes running as an unprivileged user (``nobody``)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_fixtures import free_port
from volume_services import grpc_serving, http_status, services

from a2f_engine.targets import onnxruntime_target
from a2f_standin import generate
from a2f_volume.engine_record import valid_engine
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths

USER = "nobody"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp dirs are private to root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: it creates a root-owned lost+found and runs the services as "
                    f"{USER!r}")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run the services as another user")
    base = Path(tempfile.mkdtemp(prefix="a2f-unreadable-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_root_owned_lost_and_found_does_not_stop_any_service(shared_dir: Path) -> None:
    user = pwd.getpwnam(USER)
    source, root, home = shared_dir / "source", shared_dir / "models", shared_dir / "home"
    generate("regression", source / "m", size="small", seed=1)
    for d in (source, root, home):
        d.mkdir(exist_ok=True)
        for path in [d, *d.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
    lost = root / "lost+found"
    lost.mkdir(mode=0o700)  # owned by root, unreadable for the services
    (lost / "model.json").write_text("{}")
    logs = shared_dir / "logs"
    logs.mkdir()
    env = {"HOME": str(home)}
    health, grpc_port = free_port(), free_port()
    with services(logs, user=str(user.pw_uid)) as svc:
        svc.start("model-sync", ["a2f-model-sync", "--source", f"file://{source}", "--dest",
                                 str(root), "--interval-s", "1", "--health-host", "127.0.0.1",
                                 "--health-port", str(health)], env)
        svc.start("engine-builder", ["a2f-engine-builder", "--models-root", str(root),
                                     "--poll-interval-s", "1", "--debounce-s", "0.2",
                                     "--metrics-port", "-1", "--ort-threads", "1",
                                     "--backend", "onnxruntime"], env)
        svc.start("inference", ["a2f-inference", "--models-root", str(root), "--model-path",
                                str(root / "m"), "--host", "127.0.0.1", "--port",
                                str(grpc_port), "--metrics-port", "-1", "--ort-threads", "1",
                                "--reload-poll-s", "1"], env)
        svc.wait("model-sync ready", lambda: http_status(
            f"http://127.0.0.1:{health}/ready") == 200)
        svc.wait("engine built", lambda: valid_engine(
            ModelPaths(root / "m"), "onnxruntime", onnxruntime_target(), HashCache()))
        svc.wait("inference SERVING", lambda: grpc_serving(grpc_port))
        for name in ("engine-builder", "inference"):
            log = logs / f"{name}.log"
            svc.wait(f"{name} warned about lost+found",
                     lambda log=log: f"skipping {lost}" in log.read_text())
            assert svc.log(name).count(f"skipping {lost}") == 1, svc.log(name)
        svc.alive()
    assert sorted(p.name for p in lost.iterdir()) == ["model.json"]  # untouched
