"""The emotion output through the server: NVIDIA's published stubs read ``EmotionAggregate``.

A real server on 127.0.0.1 (in this process, ONNX Runtime) serves the small regression
stand-in, with and without the Audio2Emotion stand-in beside it; NVIDIA's stub client (its own
process, ``nvidia_stub_client.py``) streams real speech made by espeak-ng and unpacks the
aggregate of every frame.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from a2f_inference.audio import write_wav
from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc
from a2f_standin.emotion import generate_emotion
from a2f_volume.model_folder import EMOTIONS

from .conftest import REGRESSION, RunningServer, one_stream, run_server

HERE = Path(__file__).parent
ESPEAK = shutil.which("espeak-ng")
TEXT = ("The quick brown fox jumps over the lazy dog, and then it runs far away into the "
        "green hills, where nobody can ever find it again.")

pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng (real speech) not installed")


@pytest.fixture(scope="module")
def a2e_root(standin_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root with the small regression stand-in and the A2E stand-in."""
    root = tmp_path_factory.mktemp("models-a2e")
    shutil.copytree(standin_root / REGRESSION, root / REGRESSION, symlinks=True)
    generate_emotion(root / "a2e", size="small", seed=0)
    return root


@pytest.fixture(scope="module")
def a2e_server(a2e_root: Path) -> Iterator[RunningServer]:
    with run_server(a2e_root, model_path=a2e_root / REGRESSION / "model.json") as srv:
        yield srv


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real speech: espeak-ng twice in a row, the second time at 2 % of the level (the
    quiet half)."""
    assert ESPEAK is not None
    raw = tmp_path_factory.mktemp("speech") / "espeak.wav"
    subprocess.run([ESPEAK, "-w", str(raw), TEXT], check=True, capture_output=True,
                   timeout=60)
    with wave.open(str(raw), "rb") as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    quiet = (pcm.astype(np.float32) * 0.02).astype("<i2")
    path = raw.with_name("loud-then-quiet.wav")
    write_wav(path, np.concatenate([pcm, quiet]).tobytes(), rate)
    return path


def _nvidia_client(address: str, wav: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(HERE / "nvidia_stub_client.py"), address,
                           str(wav), REGRESSION, "--no-pace"],
                          capture_output=True, text=True, timeout=300, check=True)
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def _top(values: dict[str, float]) -> str:
    return max(EMOTIONS, key=lambda n: values.get(n, 0.0))


def test_every_frame_carries_the_aggregate_with_a2e(a2e_server: RunningServer,
                                                    speech: Path) -> None:
    out = _nvidia_client(a2e_server.address, speech)
    assert out["status_code"] == 0 and out["grpc_code"] == "OK"
    aggs = out["emotion_aggregates"]
    assert len(aggs) == len(out["time_codes"]) > 0
    assert all(a is not None for a in aggs), "a frame without a readable emotion_aggregate"
    for t, a in zip(out["time_codes"], aggs, strict=True):
        assert len(a["a2f_smoothed_output"]) == 1 and len(a["a2e_output"]) == 1
        assert a["a2f_smoothed_output"][0][0] == pytest.approx(t)
        assert set(a["a2f_smoothed_output"][0][1]) == set(EMOTIONS)
    inputs = [e for a in aggs for e in a["input_emotions"]]
    assert inputs == [[0.0, {"joy": 1.0}], [1.0, {"fear": 1.0}]]
    # the voice decides: loud and quiet halves, well inside each (windows reach 1.875 s)
    half = len(aggs) // 2
    loud = [_top(a["a2e_output"][0][1]) for a in aggs[60:half - 60]]
    quiet = [_top(a["a2e_output"][0][1]) for a in aggs[half + 60:-60]]
    assert loud and quiet
    top_loud, top_quiet = max(set(loud), key=loud.count), max(set(quiet), key=quiet.count)
    assert top_loud != top_quiet, (top_loud, top_quiet)


def test_a2e_windows_of_concurrent_streams_share_batches(a2e_server: RunningServer) -> None:
    def count(name: str) -> float:
        return a2e_server.sample("a2f_inference_" + name, {"model": "a2e"})

    batches0, streams0 = count("a2e_batch_streams_count"), count("a2e_batch_streams_sum")

    async def many() -> list[Any]:
        return await asyncio.gather(*(one_stream(a2e_server.address, 8.0, model=REGRESSION,
                                                 chunk_s=8.0) for _ in range(6)))

    results = asyncio.run(many())
    assert all(r.ok for r in results), [r.status_message for r in results]
    assert all(r.emotions.records["a2e_output"] for r in results)
    batches = count("a2e_batch_streams_count") - batches0
    streams = count("a2e_batch_streams_sum") - streams0
    windows = sum(len(r.time_codes) for r in results) / 10  # one window per 10 frames
    assert batches > 0 and streams > batches, (batches, streams)  # some batch held >1 stream
    assert count("a2e_batch_size_sum") >= windows


def test_without_a2e_the_smoothed_output_is_the_client_keyframes(standin_root: Path,
                                                                  speech: Path) -> None:
    with run_server(standin_root, model_path=standin_root / REGRESSION / "model.json") as srv:
        out = _nvidia_client(srv.address, speech)
    aggs = out["emotion_aggregates"]
    assert out["status_code"] == 0 and len(aggs) == len(out["time_codes"]) > 0
    for t, a in zip(out["time_codes"], aggs, strict=True):
        assert a["a2e_output"] == []
        (tc, values), = a["a2f_smoothed_output"]
        assert tc == pytest.approx(t)
        # joy 1 at 0 s -> fear 1 at 1 s, interpolated, then fear holds
        w = min(max(t, 0.0), 1.0)
        assert values["joy"] == pytest.approx(1.0 - w, abs=1e-6)
        assert values["fear"] == pytest.approx(w, abs=1e-6)
    assert [e for a in aggs for e in a["input_emotions"]] == [
        [0.0, {"joy": 1.0}], [1.0, {"fear": 1.0}]]


def test_admin_lists_the_a2e_model_with_its_kind(a2e_server: RunningServer) -> None:
    async def list_models() -> admin_pb2.ListModelsResponse:
        async with grpc.aio.insecure_channel(a2e_server.address) as ch:
            resp: admin_pb2.ListModelsResponse = await admin_pb2_grpc.ModelAdminStub(
                ch).ListModels(admin_pb2.ListModelsRequest(), timeout=10)
            return resp

    by_name = {m.name: m for m in asyncio.run(list_models()).models}
    assert by_name["a2e"].kind == "emotion" and by_name["a2e"].state == "serving"
    assert by_name["a2e"].max_batch == 128  # the A2E folder's trt_info profile
    assert by_name["a2e"].engine_fingerprint.startswith("sha256:")
    assert by_name[REGRESSION].kind == "regression"
    result = asyncio.run(one_stream(a2e_server.address, 1.0, model="a2e"))
    assert not result.ok and "unknown model 'a2e'" in result.status_message  # not a face model


def test_a2f_client_writes_the_three_emotion_csvs(a2e_server: RunningServer, speech: Path,
                                                  tmp_path: Path) -> None:
    from a2f_inference.client import EmotionKey, run_client

    result, out_dir = asyncio.run(run_client(
        speech, a2e_server.address, model=REGRESSION, out=tmp_path, quiet=True,
        emotions=[EmotionKey("joy", 0.8, 0.0), EmotionKey("anger", 0.5, 1.5)]))
    assert result.ok and result.frames_without_emotion == 0
    n = len(result.time_codes)
    files = {p.name: p.read_text().splitlines() for p in out_dir.glob("*.csv")}
    assert set(files) == {"animation_frames.csv", "a2e_emotion_output.csv",
                          "a2f_smoothed_emotion_output.csv", "a2f_input_emotions.csv"}
    for name in ("a2e_emotion_output.csv", "a2f_smoothed_emotion_output.csv"):
        header, *rows = files[name]
        assert header == ",time_code," + ",".join(f"emotion_values.{e}" for e in EMOTIONS)
        assert len(rows) == n
    header, *rows = files["a2f_input_emotions.csv"]
    assert header == ",time_code,emotion_values.anger,emotion_values.joy"
    joy = repr(float(np.float32(0.8)))  # a proto float, as NVIDIA's sample app prints it
    assert rows == [f"0,0.0,,{joy}", "1,1.5,0.5,"]
