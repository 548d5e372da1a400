"""TLS credentials of the gRPC port: real certificates, a real grpc.aio server on loopback.

The health service stands in for the whole server here (the server-level TLS test streams
audio through the full stack); what is checked is the credentials' behaviour: plaintext refused,
mutual TLS enforced, files rotated on disk picked up for new connections while an open
connection keeps working.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from a2f_inference.server.tls import RotatingCertificates, TlsFiles
from a2f_inference.tls_client import client_credentials
from a2f_volume.errors import InvalidArgumentError

from .tls_certs import TestCA, write_atomically


def _files(tmp: Path, ca: TestCA, *, client_ca: TestCA | None = None) -> TlsFiles:
    srv = ca.issue("a2f-inference", server=True)
    (tmp / "tls.crt").write_bytes(srv.cert_pem)
    (tmp / "tls.key").write_bytes(srv.key_pem)
    ca_path = None
    if client_ca is not None:
        ca_path = tmp / "client-ca.crt"
        ca_path.write_bytes(client_ca.cert_pem)
    return TlsFiles(tmp / "tls.crt", tmp / "tls.key", ca_path)


async def _serve(creds: grpc.ServerCredentials) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, port


async def _check(port: int, creds: grpc.ChannelCredentials | None) -> int:
    target = f"127.0.0.1:{port}"
    async with (grpc.aio.secure_channel(target, creds) if creds is not None
                else grpc.aio.insecure_channel(target)) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(reply.status)


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


async def _test_tls_port_refuses_plaintext_and_serves_tls(tmp_path: Path, ca: TestCA) -> None:
    certs = RotatingCertificates(_files(tmp_path, ca))
    server, port = await _serve(certs.credentials())
    try:
        (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
        assert await _check(port, client_credentials(tmp_path / "ca.crt")) == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _check(port, None)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


async def _test_mtls_refuses_missing_and_foreign_client_certificates(tmp_path: Path,
                                                                    ca: TestCA) -> None:
    certs = RotatingCertificates(_files(tmp_path, ca, client_ca=ca))
    server, port = await _serve(certs.credentials())
    try:
        ca_file = tmp_path / "ca.crt"
        ca_file.write_bytes(ca.cert_pem)
        good = ca.issue("backend", server=False)
        foreign = TestCA("another CA").issue("intruder", server=False)
        for name, issued in (("good", good), ("foreign", foreign)):
            (tmp_path / f"{name}.crt").write_bytes(issued.cert_pem)
            (tmp_path / f"{name}.key").write_bytes(issued.key_pem)
        ok = client_credentials(ca_file, tmp_path / "good.crt", tmp_path / "good.key")
        assert await _check(port, ok) == 1
        for creds in (client_credentials(ca_file),
                      client_credentials(ca_file, tmp_path / "foreign.crt",
                                         tmp_path / "foreign.key")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _check(port, creds)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


async def _test_rotated_files_serve_new_connections_and_keep_open_ones(tmp_path: Path) -> None:
    old_ca, new_ca = TestCA("old CA"), TestCA("new CA")
    files = _files(tmp_path, old_ca)
    certs = RotatingCertificates(files)
    server, port = await _serve(certs.credentials())
    try:
        (tmp_path / "old-ca.crt").write_bytes(old_ca.cert_pem)
        (tmp_path / "new-ca.crt").write_bytes(new_ca.cert_pem)
        target = f"127.0.0.1:{port}"
        async with grpc.aio.secure_channel(
                target, client_credentials(tmp_path / "old-ca.crt")) as open_channel:
            stub = health_pb2_grpc.HealthStub(open_channel)
            # An open stream on the old certificate.
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            issued = new_ca.issue("a2f-inference", server=True)
            # Half-way through a rotation (new certificate, old key): not taken.
            write_atomically(files.cert, issued.cert_pem)
            with pytest.raises(grpc.aio.AioRpcError):
                await _check(port, client_credentials(tmp_path / "new-ca.crt"))
            assert certs.failed_reloads >= 1
            write_atomically(files.key, issued.key_pem)

            assert await _check(port, client_credentials(tmp_path / "new-ca.crt")) == 1
            assert certs.reloads == 1
            with pytest.raises(grpc.aio.AioRpcError):
                await _check(port, client_credentials(tmp_path / "old-ca.crt"))
            # The connection made before the rotation still works, its stream too.
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    finally:
        await server.stop(None)


def test_incomplete_or_bad_settings_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="tls_key_file is not set"):
        TlsFiles.from_settings(tmp_path / "a", None, None)
    with pytest.raises(InvalidArgumentError, match="tls_client_ca_file needs"):
        TlsFiles.from_settings(None, None, tmp_path / "ca")
    assert TlsFiles.from_settings(None, None, None) is None
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(InvalidArgumentError, match="is not PEM"):
        RotatingCertificates(TlsFiles(tmp_path / "c.pem", tmp_path / "k.pem"))
    ca = TestCA()
    a, b = ca.issue("a", server=True), ca.issue("b", server=True)
    (tmp_path / "c.pem").write_bytes(a.cert_pem)
    (tmp_path / "k.pem").write_bytes(b.key_pem)
    with pytest.raises(InvalidArgumentError, match="not a usable pair"):
        RotatingCertificates(TlsFiles(tmp_path / "c.pem", tmp_path / "k.pem"))
    with pytest.raises(InvalidArgumentError, match="cannot read tls_cert_file"):
        RotatingCertificates(TlsFiles(tmp_path / "missing.pem", tmp_path / "k.pem"))


def test_tls_port_refuses_plaintext_and_serves_tls(tmp_path: Path, ca: TestCA) -> None:
    asyncio.run(_test_tls_port_refuses_plaintext_and_serves_tls(tmp_path, ca))


def test_mtls_refuses_missing_and_foreign_client_certificates(tmp_path: Path,
                                                              ca: TestCA) -> None:
    asyncio.run(_test_mtls_refuses_missing_and_foreign_client_certificates(tmp_path, ca))


def test_rotated_files_serve_new_connections_and_keep_open_ones(tmp_path: Path) -> None:
    asyncio.run(_test_rotated_files_serve_new_connections_and_keep_open_ones(tmp_path))
