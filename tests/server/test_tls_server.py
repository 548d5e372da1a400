"""TLS and mutual TLS on the running server: a CA made in the test, real certificates, a real
server on 127.0.0.1 with the stand-in models, and NVIDIA's published stubs as a client.

Checked: a TLS-only port refuses plaintext; mutual TLS refuses a client without a certificate
and one signed by another CA; the stubs stream over TLS; certificate files rotated on disk are
used for new connections without a restart while a stream open across the rotation gets every
frame; health and metrics keep working.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2f_inference.audio import synthetic_speech, write_wav
from a2f_inference.client import StreamResult, build_requests, call_metadata, stream_audio
from a2f_inference.client import main as client_main
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc
from a2f_inference.tls_client import client_credentials

from .conftest import REGRESSION, RunningServer, run, run_server
from .tls_certs import TestCA, write_atomically

HERE = Path(__file__).parent


@dataclass
class Pki:
    """The server's files and a few client identities, all under one temporary folder."""

    dir: Path
    ca: TestCA

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    def server_files(self) -> dict[str, Path]:
        return {"tls_cert_file": self.dir / "tls.crt", "tls_key_file": self.dir / "tls.key"}

    def client(self, name: str, ca: TestCA | None = None) -> tuple[Path, Path]:
        issued = (ca or self.ca).issue(name, server=False)
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        return cert, key


def make_pki(tmp: Path, ca: TestCA) -> Pki:
    pki = Pki(tmp, ca)
    srv = ca.issue("a2f-inference", server=True)
    (tmp / "tls.crt").write_bytes(srv.cert_pem)
    (tmp / "tls.key").write_bytes(srv.key_pem)
    pki.ca_file.write_bytes(ca.cert_pem)
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path, TestCA())


async def health_check(address: str, creds: grpc.ChannelCredentials | None) -> int:
    async with (grpc.aio.secure_channel(address, creds) if creds is not None
                else grpc.aio.insecure_channel(address)) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=5)
        return int(reply.status)


def refused(address: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        run(health_check(address, creds))
    return err.value.code()


async def tls_stream(address: str, creds: grpc.ChannelCredentials, seconds: float, *,
                     pace_s: float = 0.0, chunk_s: float = 0.5) -> StreamResult:
    async with grpc.aio.secure_channel(address, creds) as ch:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)
        return await stream_audio(
            stub, build_requests(synthetic_speech(seconds, 16000), 16000, chunk_s=chunk_s),
            metadata=call_metadata(REGRESSION, None), pace_s=pace_s, timeout_s=60)


def assert_every_frame(r: StreamResult, seconds: float) -> None:
    assert r.ok, (r.grpc_code, r.grpc_details, r.status_message)
    n = round(seconds * 30)
    assert len(r.time_codes) == n
    assert r.time_codes == pytest.approx([k / 30 for k in range(n)], abs=1e-6)


@pytest.fixture
def tls_server(standin_root: Path, pki: Pki) -> Iterator[RunningServer]:
    with run_server(standin_root, metrics_port=0, **pki.server_files()) as srv:
        yield srv


def test_tls_port_refuses_plaintext_and_serves_streams_health_and_metrics(
        tls_server: RunningServer, pki: Pki) -> None:
    creds = client_credentials(pki.ca_file)
    assert run(health_check(tls_server.address, creds)) == health_pb2.HealthCheckResponse.SERVING
    assert refused(tls_server.address, None) == grpc.StatusCode.UNAVAILABLE
    assert_every_frame(run(tls_stream(tls_server.address, creds, 2.0)), 2.0)
    url = f"http://127.0.0.1:{tls_server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:  # metrics stay plain HTTP
        text = resp.read().decode()
    assert 'a2f_inference_tls_reloads_total{result="loaded"} 0.0' in text
    assert 'a2f_inference_streams_total{model="a23",result="success"}' in text


def test_mutual_tls_refuses_missing_and_foreign_client_certificates(standin_root: Path,
                                                                    pki: Pki) -> None:
    good = pki.client("backend")
    foreign = pki.client("intruder", ca=TestCA("another CA"))
    with run_server(standin_root, tls_client_ca_file=pki.ca_file, **pki.server_files()) as srv:
        ok = client_credentials(pki.ca_file, *good)
        assert_every_frame(run(tls_stream(srv.address, ok, 1.0)), 1.0)
        assert refused(srv.address, client_credentials(pki.ca_file)) == \
            grpc.StatusCode.UNAVAILABLE
        assert refused(srv.address, client_credentials(pki.ca_file, *foreign)) == \
            grpc.StatusCode.UNAVAILABLE
        assert refused(srv.address, None) == grpc.StatusCode.UNAVAILABLE


def test_nvidia_stub_client_streams_over_mutual_tls(standin_root: Path, pki: Pki,
                                                    tmp_path: Path) -> None:
    seconds = 2.0
    wav = tmp_path / "speech.wav"
    write_wav(wav, synthetic_speech(seconds, 16000), 16000)
    cert, key = pki.client("nvidia-sample")
    with run_server(standin_root, tls_client_ca_file=pki.ca_file, **pki.server_files()) as srv:
        done = subprocess.run(
            [sys.executable, str(HERE / "nvidia_stub_client.py"), srv.address, str(wav),
             REGRESSION, "--tls-ca-file", str(pki.ca_file), "--tls-cert-file", str(cert),
             "--tls-key-file", str(key)],
            capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(done.stdout)
    assert out["grpc_code"] == "OK" and out["status_code"] == 0
    assert out["order"][0] == "animation_data_stream_header"
    assert out["order"][-2:] == ["event", "status"]
    assert out["time_codes"] == pytest.approx([k / 30 for k in range(60)], abs=1e-6)


async def _rotate_during_stream(srv: RunningServer, pki: Pki) -> tuple[StreamResult, bool]:
    new_ca = TestCA("rotated CA")
    (pki.dir / "new-ca.crt").write_bytes(new_ca.cert_pem)
    old_creds = client_credentials(pki.ca_file)
    new_creds = client_credentials(pki.dir / "new-ca.crt")
    seconds = 4.0
    first_frame = asyncio.Event()
    stream = asyncio.create_task(stream_audio_on(srv.address, old_creds, seconds, first_frame))
    await asyncio.wait_for(first_frame.wait(), 30)
    issued = new_ca.issue("a2f-inference", server=True)
    write_atomically(pki.dir / "tls.key", issued.key_pem)  # as a Secret update lands: key,
    write_atomically(pki.dir / "tls.crt", issued.cert_pem)  # then certificate
    # The next handshake sees the new files: no restart, no waiting on a timer.
    new_ok = await health_check(srv.address, new_creds) == health_pb2.HealthCheckResponse.SERVING
    result = await stream
    return result, new_ok


async def stream_audio_on(address: str, creds: grpc.ChannelCredentials, seconds: float,
                          first_frame: asyncio.Event) -> StreamResult:
    async with grpc.aio.secure_channel(address, creds) as ch:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)
        return await stream_audio(
            stub, build_requests(synthetic_speech(seconds, 16000), 16000, chunk_s=0.25),
            metadata=call_metadata(REGRESSION, None), pace_s=0.25, timeout_s=60,
            on_frame=lambda _r: first_frame.set())


def test_rotated_certificate_files_are_used_without_restart_and_keep_open_streams(
        tls_server: RunningServer, pki: Pki) -> None:
    result, new_ok = run(_rotate_during_stream(tls_server, pki))
    assert new_ok
    assert_every_frame(result, 4.0)  # the stream open across the rotation got every frame
    assert result.frame_arrival_s[0] < result.audio_done_s  # it really was open meanwhile
    assert refused(tls_server.address, client_credentials(pki.ca_file)) == \
        grpc.StatusCode.UNAVAILABLE  # new connections get the new certificate
    assert tls_server.sample("a2f_inference_tls_reloads_total", {"result": "loaded"}) >= 1
    # No handshake happened between the two writes, so no half-rotated pair was ever tried.
    assert tls_server.sample("a2f_inference_tls_reloads_total", {"result": "failed"}) == 0


def test_a_tls_server_answers_probes_on_its_plaintext_admin_listener(standin_root: Path,
                                                                    pki: Pki) -> None:
    # kubelet gRPC probes cannot speak TLS: the TLS kustomize component points them here.
    with run_server(standin_root, admin_address="127.0.0.1:0", tls_client_ca_file=pki.ca_file,
                    **pki.server_files()) as srv:
        admin = f"127.0.0.1:{srv.server.admin_port}"
        assert run(health_check(admin, None)) == health_pb2.HealthCheckResponse.SERVING
        assert refused(srv.address, None) == grpc.StatusCode.UNAVAILABLE


def test_client_cli_streams_over_mutual_tls_and_names_a_half_given_identity(
        standin_root: Path, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "in.wav"
    write_wav(wav, synthetic_speech(1.0, 16000), 16000)
    cert, key = pki.client("cli")
    with run_server(standin_root, tls_client_ca_file=pki.ca_file, **pki.server_files()) as srv:
        common = [str(wav), "--server", srv.address, "--model", REGRESSION,
                  "--out", str(tmp_path / "out"), "--quiet"]
        assert client_main([*common, "--tls-ca-file", str(pki.ca_file), "--tls-cert-file",
                            str(cert), "--tls-key-file", str(key)]) == 0
        assert (tmp_path / "out" / "output_000001" / "animation_frames.csv").is_file()
        assert client_main([*common, "--tls-ca-file", str(pki.ca_file),
                            "--tls-cert-file", str(cert)]) == 2
        assert "needs both --tls-cert-file and --tls-key-file" in capsys.readouterr().err
        assert client_main(common) == 1  # plaintext against the TLS port: refused
