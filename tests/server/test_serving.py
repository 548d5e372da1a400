"""A well-formed stream, the side services, metrics, the client CLI and version pinning."""

from __future__ import annotations

import asyncio
import csv
import json
import wave
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2f_inference.audio import synthetic_speech, write_wav
from a2f_inference.client import StreamResult
from a2f_inference.client import main as client_main
from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc
from a2f_inference.proto_gen.nvidia_audio2face_3d import (
    a2x_export_config_pb2,
    a2x_export_config_pb2_grpc,
)
from a2f_inference.server.model import load_model

from .conftest import DIFFUSION, REGRESSION, RunningServer, one_stream, run, run_server


def _check_complete(r: StreamResult, seconds: float, rate: int = 16000) -> None:
    assert r.ok, (r.grpc_code, r.grpc_details, r.status_message)
    assert r.order[0] == "animation_data_stream_header"
    assert r.order[-2:] == ["event", "status"]
    n = round(seconds * 30)
    assert len(r.time_codes) == n
    assert r.time_codes == pytest.approx([k / 30 for k in range(n)], abs=1e-6)
    assert all(len(w) == 68 for w in r.weights)
    assert len(r.audio) == int(seconds * rate) * 2


@pytest.mark.parametrize("model", [REGRESSION, DIFFUSION])
def test_stream_returns_every_frame_with_its_audio(server: RunningServer, model: str) -> None:
    _check_complete(run(one_stream(server.address, 2.0, model=model)), 2.0)


def test_resampled_rate_and_odd_chunks_give_the_same_frame_count(server: RunningServer) -> None:
    # 0.3337 s chunks at 44.1 kHz have an odd byte count half of the time.
    r = run(one_stream(server.address, 2.0, rate=44100, model=REGRESSION, chunk_s=0.3337))
    _check_complete(r, 2.0, 44100)


def test_identity_is_chosen_by_metadata(server: RunningServer) -> None:
    a = run(one_stream(server.address, 1.0, model=DIFFUSION, identity="Claire"))
    b = run(one_stream(server.address, 1.0, model=DIFFUSION, identity="Mark"))
    assert a.ok and b.ok
    assert a.weights != b.weights


def test_frames_leave_before_the_audio_ends(server: RunningServer) -> None:
    r = run(one_stream(server.address, 3.0, model=REGRESSION, pace_s=0.25, chunk_s=0.25))
    assert r.ok
    assert r.frame_arrival_s[0] < r.audio_done_s


def test_metrics_count_streams_frames_audio_and_latency(server: RunningServer) -> None:
    labels = {"model": REGRESSION}
    frames0 = server.sample("a2f_inference_frames_sent_total", labels)
    audio0 = server.sample("a2f_inference_audio_received_seconds_total", labels)
    ok0 = server.sample("a2f_inference_streams_total", {**labels, "result": "success"})
    lat0 = server.sample("a2f_inference_frame_latency_seconds_count", labels)
    r = run(one_stream(server.address, 1.0, model=REGRESSION))
    assert r.ok
    assert server.sample("a2f_inference_frames_sent_total", labels) == frames0 + 30
    assert server.sample("a2f_inference_audio_received_seconds_total", labels) == \
        pytest.approx(audio0 + 1.0)
    assert server.sample("a2f_inference_streams_total", {**labels, "result": "success"}) == \
        ok0 + 1
    assert server.sample("a2f_inference_frame_latency_seconds_count", labels) == lat0 + 30
    assert server.sample("a2f_inference_active_streams", labels) == 0
    lm = server.server.registry.get(REGRESSION)
    assert server.sample("a2f_inference_model_info", {
        "model": REGRESSION, "version": lm.version, "kind": "regression",
        "backend": lm.backend, "fingerprint": lm.fingerprint}) == 1


def test_health_admin_and_config_services(server: RunningServer) -> None:
    async def calls() -> tuple[int, admin_pb2.ListModelsResponse, list[tuple[str, str]]]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            models = await admin_pb2_grpc.ModelAdminStub(ch).ListModels(
                admin_pb2.ListModelsRequest())
            cfg = a2x_export_config_pb2_grpc.A2XExportConfigServiceStub(ch).GetConfigs(
                a2x_export_config_pb2.ConfigsTypeRequest(
                    config_type=a2x_export_config_pb2.ConfigsTypeRequest.JSON))
            files = [(c.name, c.content) async for c in cfg]
            return h.status, models, files

    status, models, files = run(calls())
    assert status == health_pb2.HealthCheckResponse.SERVING
    by_name = {m.name: m for m in models.models}
    assert set(by_name) == {REGRESSION, DIFFUSION}
    assert list(by_name[DIFFUSION].identities) == ["Claire", "James", "Mark"]
    assert by_name[DIFFUSION].is_default and not by_name[REGRESSION].is_default
    assert by_name[REGRESSION].lookahead_s > 0
    assert all(m.version and m.state == "serving" for m in models.models)
    contents = {name: json.loads(text) for name, text in files}
    assert contents["server.json"]["server"]["idle_timeout_s"] == 1.5
    assert contents[f"model-{REGRESSION}.json"]["model"]["kind"] == "regression"


def test_client_cli_writes_csv_and_wav(server: RunningServer, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "in.wav"
    write_wav(wav, synthetic_speech(1.5, 16000), 16000)
    out = tmp_path / "out"
    rc = client_main([str(wav), "--server", server.address, "--model", REGRESSION,
                      "--emotion", "joy=0.8@0", "--emotion", "fear=1@1.0", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "45 frames" in printed and "FPS" in printed
    rc = client_main([str(wav), "--server", server.address, "--model", REGRESSION,
                      "--out", str(out), "--quiet"])
    assert rc == 0
    first, second = out / "output_000001", out / "output_000002"
    assert second.is_dir()
    with open(first / "animation_frames.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "timeCode" and rows[0][1] == "blendShapes.EyeBlinkLeft"
    assert len(rows[0]) == 69 and len(rows) == 46
    with wave.open(str(first / "out.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getnframes()) == (1, 2, 24000)


def test_client_refuses_stereo_wav_clearly(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "stereo.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 3200)
    assert client_main([str(wav), "--server", "127.0.0.1:1"]) == 2
    assert "only 16-bit mono PCM WAV" in capsys.readouterr().err


def test_new_version_takes_new_streams_while_open_streams_finish_on_theirs(
        server: RunningServer) -> None:
    registry = server.server.registry
    old = registry.get(REGRESSION)

    async def scenario() -> tuple[StreamResult, StreamResult]:
        running = asyncio.create_task(one_stream(server.address, 2.0, model=REGRESSION,
                                                 pace_s=0.25, chunk_s=0.25))
        await asyncio.sleep(0.6)
        new = await asyncio.to_thread(load_model, old.folder, registry.config)
        new.version = old.version + "-next"
        registry.install(new)
        assert not old.closed  # a stream still runs on it
        fresh = await one_stream(server.address, 0.5, model=REGRESSION)
        return await running, fresh

    first, fresh = run(scenario())
    assert first.ok and first.model_version == old.version
    assert fresh.ok and fresh.model_version == old.version + "-next"
    assert old.closed  # released with its last stream


def test_health_is_not_serving_when_the_default_model_is_missing(standin_root: Path) -> None:
    with run_server(standin_root, model_path=standin_root / "absent" / "model.json") as srv:
        async def check() -> int:
            async with grpc.aio.insecure_channel(srv.address) as ch:
                r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
                return int(r.status)

        assert run(check()) == health_pb2.HealthCheckResponse.NOT_SERVING
