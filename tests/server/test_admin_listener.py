"""What each port exposes: ``GetConfigs`` shows no host paths, and ``admin_address`` moves
``ModelAdmin``, ``GetConfigs`` and reflection off the public port (real servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from a2f_inference.audio import synthetic_speech
from a2f_inference.client import build_requests
from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc
from a2f_inference.proto_gen.nvidia_audio2face_3d import (
    a2x_export_config_pb2,
    a2x_export_config_pb2_grpc,
    audio2face_pb2_grpc,
)
from a2f_inference.protocol import LIVENESS_SERVICE
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.config_export import HIDDEN_PATH, relative_to_root
from a2f_volume.errors import InvalidArgumentError

from .conftest import DIFFUSION, REGRESSION, one_stream, run, run_server


async def get_configs(address: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as ch:
        call = a2x_export_config_pb2_grpc.A2XExportConfigServiceStub(ch).GetConfigs(
            a2x_export_config_pb2.ConfigsTypeRequest(
                config_type=a2x_export_config_pb2.ConfigsTypeRequest.JSON), timeout=10)
        return {c.name: json.loads(c.content) async for c in call}


async def list_models(address: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as ch:
        reply = await admin_pb2_grpc.ModelAdminStub(ch).ListModels(
            admin_pb2.ListModelsRequest(), timeout=10)
        return sorted(m.name for m in reply.models)


async def reflected_services(address: str) -> list[str]:
    """The services reflection lists; ``grpc.RpcError`` with the server's code when refused.

    grpc's blocking API: a bidirectional grpc.aio call that the server ends before the first
    request is written reports INTERNAL instead of the server's code (grpc/grpc#36066)."""
    def call() -> list[str]:
        with grpc.insecure_channel(address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            for reply in stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                    timeout=10):
                return sorted(s.name for s in reply.list_services_response.service)
        return []

    return await asyncio.to_thread(call)


async def health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)


def strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_get_configs_shows_no_absolute_path(standin_root: Path, tmp_path: Path) -> None:
    cert = tmp_path / "not-read.pem"  # shown as set, never as its path
    with run_server(standin_root) as srv:
        configs = run(get_configs(srv.address))
    texts = strings(configs)
    assert texts, configs
    assert not [t for t in texts if t.startswith("/") or str(standin_root) in t]
    server = configs["server.json"]["server"]
    assert server["models_root"] == HIDDEN_PATH
    assert server["model_path"] == f"{DIFFUSION}/model.json"
    assert server["tls_cert_file"] is None and server["admin_address"] == ""
    assert configs[f"model-{REGRESSION}.json"]["model"]["folder"] == REGRESSION
    assert relative_to_root(cert, standin_root) == HIDDEN_PATH


def test_admin_listener_takes_admin_configs_and_reflection_off_the_public_port(
        standin_root: Path) -> None:
    with run_server(standin_root, admin_address="127.0.0.1:0") as srv:
        public = srv.address
        admin = f"127.0.0.1:{srv.server.admin_port}"
        assert srv.server.admin_port not in (0, srv.server.port)
        for call in (list_models(public), get_configs(public), reflected_services(public)):
            with pytest.raises(grpc.RpcError) as err:
                run(call)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert run(health(public)) == health_pb2.HealthCheckResponse.SERVING
        assert run(one_stream(public, 1.0, model=REGRESSION)).ok

        assert run(list_models(admin)) == [REGRESSION, DIFFUSION]
        assert "server.json" in run(get_configs(admin))
        assert run(reflected_services(admin)) == sorted([
            "a2f.admin.v1.ModelAdmin",
            "nvidia_ace.services.a2x_export_config.v1.A2XExportConfigService",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"])
        assert run(health(admin)) == health_pb2.HealthCheckResponse.SERVING
        # the Kubernetes tls component's liveness probe asks this port for "liveness"
        assert run(health(admin, LIVENESS_SERVICE)) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(admin) as ch:  # blocking API: see reflected_services
            with pytest.raises(grpc.RpcError) as err:
                list(audio2face_pb2_grpc.A2FControllerServiceStub(ch).ProcessAudioStream(
                    iter(build_requests(synthetic_speech(0.5, 16000), 16000)), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_default_keeps_admin_services_on_the_public_port(standin_root: Path) -> None:
    with run_server(standin_root) as srv:
        assert srv.server.admin_port == 0
        assert run(list_models(srv.address)) == [REGRESSION, DIFFUSION]
        assert "a2f.admin.v1.ModelAdmin" in run(reflected_services(srv.address))


@pytest.mark.parametrize("bad", ["50052", "host:", ":50052", "h:70000", "h:port"])
def test_a_bad_admin_address_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="admin_address"):
        ServerConfig(admin_address=bad)


def test_tls_settings_come_from_env_and_must_be_complete(tmp_path: Path) -> None:
    env = {"A2F_INFERENCE_TLS_CERT_FILE": str(tmp_path / "c.pem"),
           "A2F_INFERENCE_TLS_KEY_FILE": str(tmp_path / "k.pem"),
           "A2F_INFERENCE_TLS_CLIENT_CA_FILE": str(tmp_path / "ca.pem"),
           "A2F_INFERENCE_ADMIN_ADDRESS": "127.0.0.1:50052"}
    cfg = ServerConfig.from_env(env)
    assert (cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file) == (
        tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem")
    assert cfg.admin_address == "127.0.0.1:50052"
    with pytest.raises(InvalidArgumentError, match="tls_key_file is not set"):
        ServerConfig.from_env({"A2F_INFERENCE_TLS_CERT_FILE": str(tmp_path / "c.pem")})
