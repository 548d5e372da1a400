"""Bounded load on 127.0.0.1: many concurrent streams, and memory across many short ones."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2f_inference.audio import synthetic_speech
from a2f_inference.client import (
    StreamResult,
    build_requests,
    call_metadata,
    stream_audio,
)
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc

from .conftest import REGRESSION, free_port, run, run_server


@pytest.mark.slow
def test_two_hundred_concurrent_streams_complete_without_error(standin_root: Path) -> None:
    n, seconds = 200, 1.0
    pcm = synthetic_speech(seconds)
    requests = build_requests(pcm, 16000, chunk_s=0.25)

    async def many(address: str) -> list[StreamResult]:
        channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
        try:
            stubs = [audio2face_pb2_grpc.A2FControllerServiceStub(c) for c in channels]
            return await asyncio.gather(*(
                stream_audio(stubs[i % 4], requests, metadata=call_metadata(REGRESSION, None),
                             pace_s=0.25, timeout_s=240)
                for i in range(n)))
        finally:
            for c in channels:
                await c.close()

    with run_server(standin_root, max_streams=n) as srv:
        results = run(many(srv.address))
        failures = [(r.grpc_code, r.grpc_details) for r in results if not r.ok]
        assert failures == []
        assert all(len(r.time_codes) == 30 for r in results)
        assert srv.sample("a2f_inference_streams_total",
                          {"model": REGRESSION, "result": "success"}) == n
        assert srv.server.registry.open_streams == 0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_stays_flat_across_two_thousand_short_streams(standin_root: Path,
                                                             tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "A2F_MODEL_DATA_PATH": str(standin_root),
           "A2F_MODEL_PATH": str(standin_root / REGRESSION)}
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "a2f_inference.server.cli", "--host", "127.0.0.1",
             "--port", str(port), "--metrics-port", "-1", "--ort-threads", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as ch:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline
                try:
                    if health_pb2_grpc.HealthStub(ch).Check(
                            health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    time.sleep(0.2)
        requests = build_requests(synthetic_speech(0.2), 16000, chunk_s=0.1)

        async def sequential(count: int) -> int:
            ok = 0
            async with grpc.aio.insecure_channel(address) as ch:
                stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)
                for _ in range(count):
                    r = await stream_audio(stub, requests, metadata=call_metadata(REGRESSION,
                                                                                  None))
                    ok += r.ok and len(r.time_codes) == 6
            return ok

        assert run(sequential(300)) == 300  # warm-up: caches, arenas, thread pools
        before = _rss_kb(proc.pid)
        assert run(sequential(2000)) == 2000
        after = _rss_kb(proc.pid)
        growth = (after - before) / before
        print(f"server RSS {before} kB -> {after} kB over 2000 streams ({growth:+.2%})")
        assert growth < 0.05
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
