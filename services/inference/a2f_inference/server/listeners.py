"""The gRPC listeners: which services each port carries, and how the port is secured.

The public port always carries the Audio2Face-3D controller and health. ``ModelAdmin``,
``A2XExportConfigService`` (``GetConfigs``) and reflection describe the deployment rather than
serve animation; with ``admin_address`` set they move to a listener of their own (loopback or
a cluster-internal port) and the public port answers them ``UNIMPLEMENTED``.

The public port is plaintext, TLS or mutual TLS (:mod:`a2f_inference.server.tls`). The admin
listener is always plaintext and also carries health: kubelet gRPC probes cannot speak TLS, so
with TLS on the public port the probes go to the admin listener. Bind it to loopback, or to a
pod port that no NetworkPolicy rule admits (the kubelet's probes still reach it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc
from a2f_inference.proto_gen.nvidia_audio2face_3d import (
    a2x_export_config_pb2,
    a2x_export_config_pb2_grpc,
    audio2face_pb2,
)
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.metrics import InferenceMetrics
from a2f_inference.server.registry import ModelRegistry
from a2f_inference.server.reload import ReloadStatus
from a2f_inference.server.servicers import A2XExportConfigServicer, ModelAdminServicer
from a2f_inference.server.tls import RotatingCertificates, TlsFiles

log = logging.getLogger(__name__)

CONTROLLER_SERVICE = audio2face_pb2.DESCRIPTOR.services_by_name["A2FControllerService"].full_name
EXPORT_CONFIG_SERVICE = (
    a2x_export_config_pb2.DESCRIPTOR.services_by_name["A2XExportConfigService"].full_name)
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].full_name
#: Services that move to the admin listener when one is configured.
ADMIN_SERVICES = (EXPORT_CONFIG_SERVICE, ADMIN_SERVICE)


def tls_certificates(config: ServerConfig,
                     metrics: InferenceMetrics) -> RotatingCertificates | None:
    """The rotating certificates of the configured TLS files, or None (plaintext).

    Raises the project's ``InvalidArgumentError`` naming the file when one cannot be used."""
    files = TlsFiles.from_settings(config.tls_cert_file, config.tls_key_file,
                                   config.tls_client_ca_file)
    if files is None:
        return None
    return RotatingCertificates(files, on_reload=metrics.tls_reloaded)


def listen(server: grpc.aio.Server, address: str, certs: RotatingCertificates | None) -> int:
    """Bind ``address`` with the server's credentials; the port bound (OSError when none)."""
    if certs is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, certs.credentials())
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def describe_security(certs: RotatingCertificates | None) -> str:
    """``plaintext``, ``TLS`` or ``mutual TLS``, for the start-up log line."""
    if certs is None:
        return "plaintext"
    return "mutual TLS" if certs.require_client_auth else "TLS"


def add_admin_services(server: grpc.aio.Server, registry: ModelRegistry, config: ServerConfig,
                       reload_status: Callable[[], Mapping[str, ReloadStatus]] | None) -> None:
    """``ModelAdmin`` and ``A2XExportConfigService`` on ``server``."""
    a2x_export_config_pb2_grpc.add_A2XExportConfigServiceServicer_to_server(
        A2XExportConfigServicer(registry, config), server)
    admin_pb2_grpc.add_ModelAdminServicer_to_server(
        ModelAdminServicer(registry, reload_status), server)


def add_health_and_reflection(server: grpc.aio.Server, servicer: health.aio.HealthServicer,
                              served: Sequence[str], *, with_reflection: bool) -> None:
    """Health on every listener; reflection (listing ``served``) where asked for."""
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if with_reflection:
        reflection.enable_server_reflection(
            (*served, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
