"""Real service processes on loopback for the volume fault tests: start, poll, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent
WAIT_S = 90.0


class Services:
    """Processes started by one test; every one is stopped (SIGTERM, then SIGKILL) at exit."""

    def __init__(self, logs: Path, user: str | None = None) -> None:
        self.logs = logs
        self.user = user
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        cmd = [str(BIN / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}",
                   "--clear-groups", *cmd]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env=full_env)
        log.close()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {p.returncode}:\n{self.log(name)[-3000:]}")

    def wait(self, what: str, cond: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.alive()
            got = cond()
            if got:
                return got
            time.sleep(0.1)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-2500:]}" for n in self.procs)
        raise AssertionError(f"{what}: not reached within {timeout_s:.0f} s\n{logs}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextlib.contextmanager
def services(logs: Path, user: str | None = None) -> Iterator[Services]:
    s = Services(logs, user)
    try:
        yield s
    finally:
        s.stop()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def http_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return ""


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def grpc_serving(port: int) -> bool:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return bool(r.status == health_pb2.HealthCheckResponse.SERVING)
