"""Hot reload seen through the server's gRPC surface: metadata, admin, metrics, health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from a2f_inference.client import StreamResult, build_requests, stream_audio
from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc
from a2f_inference.server.app import BackgroundServer
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.reload import health_service_name
from a2f_volume.versions import unpublish

from .conftest import REGRESSION, build_engine, publish_version, speech

RATE = 16000


async def _stream(address: str, seconds: float, pace_s: float = 0.0) -> StreamResult:
    requests = build_requests(speech(seconds, RATE), RATE, chunk_s=0.25)
    async with grpc.aio.insecure_channel(address) as ch:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)
        return await stream_audio(stub, requests, metadata=(("x-a2f-model", REGRESSION),),
                                  pace_s=pace_s, timeout_s=60)


async def _models(address: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await admin_pb2_grpc.ModelAdminStub(ch).ListModels(admin_pb2.ListModelsRequest())
        return {m.name: m for m in resp.models}


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        r = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service))
        return int(r.status)


async def _until(what: str, cond: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_swap_is_visible_in_metadata_admin_metrics_and_health(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    v1 = publish_version(root, REGRESSION, seed=1, kind="regression")
    build_engine(root, REGRESSION)
    metrics = CollectorRegistry()
    config = ServerConfig(models_root=root, model_path=root / REGRESSION / "model.json",
                          host="127.0.0.1", port=0, metrics_port=-1, ort_threads=1,
                          engine_policy="require-built", reload_poll_s=0.5,
                          reload_debounce_s=0.05, grace_s=2.0)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    def sample(name: str, labels: dict[str, str]) -> float:
        v = metrics.get_sample_value(name, labels)
        return 0.0 if v is None else v

    with BackgroundServer(config, metrics) as bg:
        address = bg.address

        async def scenario() -> tuple[StreamResult, StreamResult, str]:
            assert await _health(address) == serving
            assert await _health(address, health_service_name(REGRESSION)) == serving
            old = asyncio.create_task(_stream(address, 3.0, pace_s=0.1))
            await _until("the stream to open", lambda: _open_on(address, v1))
            v2 = publish_version(root, REGRESSION, seed=2, kind="regression")
            build_engine(root, REGRESSION)

            async def swapped() -> Any:
                m = (await _models(address))[REGRESSION]
                return m if m.version == v2 else None

            info = await _until("v2 to serve new streams", swapped)
            states = {v.version: (v.state, v.open_streams) for v in info.versions}
            assert states == {v2: ("serving", 0), v1: ("draining", 1)}
            assert info.open_streams == 1 and info.loading_version == ""
            assert sample("a2f_inference_model_version_streams",
                          {"model": REGRESSION, "version": v1, "state": "draining"}) == 1
            fresh = await _stream(address, 0.5)
            return await old, fresh, v2

        old, fresh, v2 = asyncio.run(scenario())
        assert old.ok and old.model_version == v1
        assert fresh.ok and fresh.model_version == v2
        assert sample("a2f_inference_model_loads_total",
                      {"model": REGRESSION, "result": "loaded"}) == 2
        assert sample("a2f_inference_model_version_streams",
                      {"model": REGRESSION, "version": v1, "state": "draining"}) == 0

        async def removed() -> None:
            assert unpublish(root, REGRESSION)
            await _until("the model's health to turn NOT_SERVING", lambda: _is(
                address, health_service_name(REGRESSION), not_serving))
            assert await _health(address) == not_serving  # the default model is gone
            failed = await _stream(address, 0.5)
            assert failed.grpc_code == grpc.StatusCode.NOT_FOUND
            # back without an engine: listed as waiting, not served (require-built)
            v3 = publish_version(root, REGRESSION, seed=3, kind="regression")

            async def waiting() -> Any:
                m = (await _models(address)).get(REGRESSION)
                return m if m is not None and m.state == "waiting" else None

            info = await _until("the new version to be listed as waiting", waiting)
            assert info.waiting_version == v3 and "no valid engine" in info.waiting_reason
            assert await _health(address) == not_serving

        asyncio.run(removed())


async def _open_on(address: str, version: str) -> bool:
    m = (await _models(address)).get(REGRESSION)
    return bool(m is not None and m.version == version and m.open_streams == 1)


async def _is(address: str, service: str, status: int) -> bool:
    return await _health(address, service) == status
