"""Liveness apart from readiness, and the require-tensorrt engine policy (no silent CPU
fallback). TensorRT cannot be installed here, so under require-tensorrt no model may be
served: the real case of a GPU image whose TensorRT wheel is missing."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc
from a2f_inference.protocol import LIVENESS_SERVICE
from a2f_inference.server.reload import health_service_name

from .conftest import DIFFUSION, run_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(ch: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_require_tensorrt_refuses_onnx_runtime_but_stays_alive(standin_root: Path) -> None:
    with run_server(standin_root, engine_policy="require-tensorrt") as srv, \
            grpc.insecure_channel(srv.address) as ch:
        assert _status(ch, "") == NOT_SERVING  # not ready: no model may be served
        assert _status(ch, health_service_name(DIFFUSION)) != SERVING
        assert _status(ch, LIVENESS_SERVICE) == SERVING  # but the process is alive
        models = admin_pb2_grpc.ModelAdminStub(ch).ListModels(
            admin_pb2.ListModelsRequest(), timeout=5).models
        default = next(m for m in models if m.name == DIFFUSION)
        assert default.engine_backend != "onnxruntime"
        why = default.waiting_reason + " " + default.error
        assert "require-tensorrt" in why and "TensorRT" in why, why


def test_liveness_and_backend_with_the_models(standin_root: Path) -> None:
    with run_server(standin_root) as srv, grpc.insecure_channel(srv.address) as ch:
        assert _status(ch, "") == SERVING
        assert _status(ch, LIVENESS_SERVICE) == SERVING
        models = admin_pb2_grpc.ModelAdminStub(ch).ListModels(
            admin_pb2.ListModelsRequest(), timeout=5).models
        assert {m.engine_backend for m in models} == {"onnxruntime"}
