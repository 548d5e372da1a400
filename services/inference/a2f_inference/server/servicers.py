"""Thin gRPC servicers: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc
from a2f_inference.proto_gen.nvidia_audio2face_3d import (
    a2x_export_config_pb2,
    a2x_export_config_pb2_grpc,
    audio2face_pb2_grpc,
    messages_pb2,
)
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.errors import to_status
from a2f_inference.server.metrics import InferenceMetrics
from a2f_inference.server.registry import ModelRegistry, Served
from a2f_inference.server.reload import ReloadStatus
from a2f_inference.server.streaming import AudioStreamCall

log = logging.getLogger(__name__)


class A2FControllerServicer(audio2face_pb2_grpc.A2FControllerServiceServicer):
    """``nvidia_ace.services.a2f_controller.v1.A2FControllerService``."""

    def __init__(self, registry: ModelRegistry, config: ServerConfig,
                 metrics: InferenceMetrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics

    async def ProcessAudioStream(
        self, request_iterator: AsyncIterator[messages_pb2.AudioWithEmotionStream],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[messages_pb2.A2F3DAnimationDataStream]:
        call = AudioStreamCall(self.registry, self.config, self.metrics)
        async for response in call.run(request_iterator, context):
            yield response


def _to_yaml(obj: Any, indent: int = 0) -> str:
    """A small YAML writer for plain dicts/lists of scalars (no dependency needed)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{k}:")
                lines.append(_to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{k}: {json.dumps(v if v != {} else {})}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}-")
                lines.append(_to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}- {json.dumps(v)}")
    return "\n".join(lines)


def _model_dict(lm: Served) -> dict[str, Any]:
    return {"name": lm.name, "kind": lm.kind, "version": lm.version,
            "folder": str(lm.folder), "identities": list(lm.identities),
            "engine": {"backend": lm.backend, "fingerprint": lm.fingerprint},
            "max_batch": lm.max_batch}


class A2XExportConfigServicer(a2x_export_config_pb2_grpc.A2XExportConfigServiceServicer):
    """``nvidia_ace.services.a2x_export_config.v1.A2XExportConfigService``: the running config."""

    def __init__(self, registry: ModelRegistry, config: ServerConfig) -> None:
        self.registry = registry
        self.config = config

    def configs(self) -> list[tuple[str, dict[str, Any]]]:
        server = {k: (str(v) if v is not None and not isinstance(v, int | float | str) else v)
                  for k, v in dataclasses.asdict(self.config).items()}
        out: list[tuple[str, dict[str, Any]]] = [("server", {"server": server})]
        for st in self.registry.states():
            if st.serving is not None:
                out.append((f"model-{st.name}", {"model": _model_dict(st.serving)}))
        return out

    async def GetConfigs(
        self, request: a2x_export_config_pb2.ConfigsTypeRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[a2x_export_config_pb2.A2XConfig]:
        as_json = request.config_type == a2x_export_config_pb2.ConfigsTypeRequest.JSON
        for name, content in self.configs():
            text = json.dumps(content, indent=2) if as_json else _to_yaml(content) + "\n"
            yield a2x_export_config_pb2.A2XConfig(
                name=f"{name}.{'json' if as_json else 'yaml'}", content=text)


class ModelAdminServicer(admin_pb2_grpc.ModelAdminServicer):
    """``a2f.admin.v1.ModelAdmin``: what the server holds."""

    def __init__(self, registry: ModelRegistry,
                 reload_status: Callable[[], Mapping[str, ReloadStatus]] | None = None) -> None:
        self.registry = registry
        self.reload_status = reload_status

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: grpc.aio.ServicerContext,
    ) -> admin_pb2.ListModelsResponse:
        try:
            default = self.registry.config.default_model
            resp = admin_pb2.ListModelsResponse()
            reloads = dict(self.reload_status()) if self.reload_status is not None else {}
            states = {st.name: st for st in self.registry.states()}
            for name in sorted(states.keys() | reloads.keys()):
                st = states.get(name)
                rs = reloads.get(name)
                if st is None:  # known to the reloader only: not served (yet)
                    assert rs is not None
                    if not (rs.loading_version or rs.waiting_version or rs.error):
                        continue  # removed from the volume: nothing left to report
                    state = ("loading" if rs.loading_version else
                             "failed" if rs.error else "waiting")
                    resp.models.append(admin_pb2.ModelInfo(
                        name=name, state=state, error=rs.error, is_default=name == default,
                        loading_version=rs.loading_version, waiting_version=rs.waiting_version,
                        waiting_reason=rs.waiting_reason))
                    continue
                info = admin_pb2.ModelInfo(name=st.name, state=st.state, error=st.error,
                                           is_default=st.name == default)
                if rs is not None:
                    info.loading_version = rs.loading_version
                    info.waiting_version = rs.waiting_version
                    info.waiting_reason = rs.waiting_reason
                    info.error = info.error or rs.error
                for m, vstate in ([(st.serving, "serving")] if st.serving else []) + [
                        (d, "draining") for d in st.draining]:
                    info.versions.append(admin_pb2.VersionStreams(
                        version=m.version, state=vstate, open_streams=m.open_streams))
                lm = st.serving or (st.draining[0] if st.draining else None)
                if lm is not None:
                    info.kind = lm.kind
                    info.identities.extend(lm.identities)
                    info.version = lm.version
                    info.engine_backend = lm.backend
                    info.engine_fingerprint = lm.fingerprint
                    info.lookahead_s = lm.lookahead_s
                    info.max_batch = lm.max_batch
                info.open_streams = sum(m.open_streams for m in
                                        ([st.serving] if st.serving else []) + st.draining)
                resp.models.append(info)
            return resp
        except Exception as exc:
            code, message = to_status(exc)
            await context.abort(code, message)
            raise
