"""The pod end to end: model-sync, engine-builder and inference as three processes.

One models root, a moto S3 server on 127.0.0.1, the three console scripts started the way
the pod starts them. New model versions are uploaded to S3 while clients keep streams open:
each version goes live without a restart, no stream fails, every stream's frames come from
the one version its ``x-a2f-model-version`` metadata names (compared with an offline run of
that version's pipeline), and a corrupt version leaves the previous one serving.

The regression stand-in is used because its output is deterministic (the diffusion model
draws random noise per stream); diffusion's stay-on-one-engine rule is tested in process.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from s3_fixtures import AWS_ENV, free_port, moto_server, s3_client

from a2f_inference.client import build_requests, stream_audio
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.engines import EngineChecker
from a2f_inference.server.model import LoadedModel, load_model
from a2f_inference.server.params import open_session
from a2f_volume import layout
from a2f_volume.versions import current_version

from .conftest import REGRESSION, speech

pytestmark = [pytest.mark.s3]

MODEL = REGRESSION
PREFIX = "a2f-models/"
BIN = Path(sys.executable).parent
RATE = 16000
CLIENTS = 4
WAIT_S = 90.0  # failure detection only: how long before a step is declared stuck


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


def _make_template(base: Path, seed: int, corrupt: bool = False) -> Path:
    from a2f_standin.generate import generate

    out = generate("regression", base / f"seed{seed}{'-corrupt' if corrupt else ''}",
                   size="small", seed=seed)
    if corrupt:  # the ONNX stays valid (an engine builds); loading the folder fails
        victim = sorted(out.glob("*.npz"))[0]
        victim.write_bytes(b"not an npz archive " * 64)
    return out


def _upload(s3: Any, bucket: str, folder: Path, first: tuple[str, ...] = ()) -> None:
    """Upload a model folder over the previous one (``first`` names go up first)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    files.sort(key=lambda p: p.name not in first)
    for p in files:
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}{MODEL}/{p.name}", Body=p.read_bytes())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Pod:
    root: Path
    logs: Path
    grpc_port: int
    metrics_port: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log,
                                                stderr=subprocess.STDOUT)

    def alive(self) -> None:
        for name, p in self.procs.items():
            assert p.poll() is None, f"{name} exited with {p.returncode}: {self.tail(name)}"

    def tail(self, name: str, n: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-n:]

    def metric(self, name: str, labels: dict[str, str]) -> float:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(name + "{"):
                got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
                if got == want:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                codes[name] = None
        return codes


def _wait(what: str, pod: Pod, cond: Any, timeout_s: float = WAIT_S, step_s: float = 0.05
          ) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        pod.alive()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n} ---\n{pod.tail(n)}" for n in pod.procs)
            raise AssertionError(f"timed out waiting for {what}:\n{logs}")
        time.sleep(step_s)


def _serving(pod: Pod) -> bool:
    with grpc.insecure_channel(pod.address) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


_CHECKER = EngineChecker()  # one hash cache: polling stats files, reads each only once


def _engine_published(root: Path) -> str | None:
    """The current version id once its engine is valid on this machine, else None."""
    try:
        vdir = (root / MODEL).resolve(strict=True)
        vid = current_version(vdir)
    except Exception:  # mid-switch or not there yet
        return None
    return vid if _CHECKER(vdir).valid else None


@dataclass
class StreamRecord:
    started_s: float
    version: str
    ok: bool
    detail: str
    weights: np.ndarray


class References:
    """Offline runs of each version's own pipeline on the clients' exact request stream."""

    def __init__(self, root: Path, pcm: bytes) -> None:
        self.root = root
        self.requests = build_requests(pcm, RATE, chunk_s=0.25)
        self.pcm = pcm
        self._cache: dict[str, np.ndarray] = {}
        self.config = ServerConfig(models_root=root, ort_threads=1, metrics_port=-1, port=0)

    def frames(self, version: str) -> np.ndarray:
        if version not in self._cache:
            vdir = layout.versions_dir(self.root, MODEL) / version
            lm: LoadedModel = load_model(vdir, self.config)
            try:
                header = self.requests[0].audio_stream_header
                session = open_session(lm.runtime, header, identity=None, input_rate=RATE,
                                       output_fps=self.config.output_fps)
                session.push_audio(self.pcm)
                session.end_of_audio()
                out: list[np.ndarray] = []
                while not session.done:
                    assert session.error is None, session.error
                    session.wait(0.5)
                    out.extend(np.asarray(f.weights) for f in session.take_frames())
                session.close()
            finally:
                lm.close()
            self._cache[version] = np.stack(out)
        return self._cache[version]


async def _client_loop(address: str, requests: list[Any], stop: asyncio.Event,
                       out: list[StreamRecord]) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = await stream_audio(stub, requests, pace_s=0.03, timeout_s=60)
                ok, detail = r.ok, f"{r.grpc_code} {r.grpc_details} {r.status_message}"
                weights = np.asarray(r.weights, dtype=np.float32)
                version = r.model_version
            except grpc.RpcError as err:
                ok, detail, version = False, repr(err), ""
                weights = np.zeros(0, dtype=np.float32)
            out.append(StreamRecord(t0, version, ok, detail, weights))


def _check_streams(records: list[StreamRecord], refs: References) -> dict[str, int]:
    bad = [r for r in records if not r.ok]
    assert not bad, f"{len(bad)} of {len(records)} streams failed: {bad[0].detail}"
    per_version: dict[str, int] = {}
    for r in records:
        assert r.version, "a stream came back without x-a2f-model-version"
        ref = refs.frames(r.version)
        assert r.weights.shape == ref.shape, (r.version, r.weights.shape, ref.shape)
        np.testing.assert_allclose(r.weights, ref, atol=2e-4,
                                   err_msg=f"frames do not all come from {r.version}")
        per_version[r.version] = per_version.get(r.version, 0) + 1
    return per_version


def test_new_versions_uploaded_to_s3_go_live_without_restart_under_load(
        tmp_path: Path, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = "pod-" + os.urandom(3).hex()
    s3.create_bucket(Bucket=bucket)
    templates = tmp_path / "templates"
    v1, v2, bad, v4 = (_make_template(templates, 1), _make_template(templates, 2),
                       _make_template(templates, 3, corrupt=True), _make_template(templates, 4))
    root = tmp_path / "models"
    root.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    pod = Pod(root, logs, free_port(), free_port())
    aws = {**AWS_ENV, "PYTHONUNBUFFERED": "1"}
    _upload(s3, bucket, v1)
    try:
        pod.start("model-sync", [str(BIN / "a2f-model-sync"), "--source",
                                 f"s3://{bucket}/{PREFIX}", "--dest", str(root),
                                 "--endpoint-url", s3_endpoint, "--interval-s", "1",
                                 "--health-port", "-1"], aws)
        pod.start("engine-builder", [str(BIN / "a2f-engine-builder"), "--models-root",
                                     str(root), "--poll-interval-s", "1", "--debounce-s",
                                     "0.2", "--metrics-port", "0", "--ort-threads", "1"], aws)
        pod.start("inference", [str(BIN / "a2f-inference"), "--models-root", str(root),
                                "--model-path", str(root / MODEL), "--host", "127.0.0.1",
                                "--port", str(pod.grpc_port), "--metrics-port",
                                str(pod.metrics_port), "--engine-policy", "require-built",
                                "--ort-threads", "1", "--reload-poll-s", "1",
                                "--reload-debounce-s", "0.2"], aws)
        _wait("inference SERVING", pod, lambda: _serving(pod))
        first = _wait("v1 engine", pod, lambda: _engine_published(root))

        pcm = speech(1.5, RATE, seed=3)
        refs = References(root, pcm)
        assert np.abs(refs.frames(first)).max() > 0

        async def under_load(upload: Path, expect_live: bool, first_names: tuple[str, ...]
                             ) -> tuple[list[StreamRecord], float, float, str]:
            records: list[StreamRecord] = []
            stop = asyncio.Event()
            tasks = [asyncio.create_task(_client_loop(pod.address, refs.requests, stop, records))
                     for _ in range(CLIENTS)]
            await asyncio.sleep(1.0)
            before = {_engine_published(root)}
            _upload(s3, bucket, upload, first_names)
            onnx_sha = _sha(upload / layout.ONNX_NAME)

            def published() -> str | None:  # the uploaded version is on the volume, engine valid
                vid = _engine_published(root)
                if vid is None or vid in before:
                    return None
                vdir = layout.versions_dir(root, MODEL) / vid
                return vid if _sha(vdir / layout.ONNX_NAME) == onnx_sha else None

            vid = await asyncio.to_thread(_wait, "uploaded version published", pod, published)
            t_engine = time.monotonic()
            live_at = 0.0
            if expect_live:
                while not any(r.version == vid for r in records):
                    pod.alive()
                    assert time.monotonic() - t_engine < WAIT_S, pod.tail("inference")
                    await asyncio.sleep(0.02)
                live_at = min(r.started_s for r in records if r.version == vid)
                await asyncio.sleep(2.0)  # keep the load on after the swap
            else:
                await asyncio.to_thread(
                    _wait, "the failed load to be counted", pod,
                    lambda: pod.metric("a2f_inference_model_loads_total",
                                       {"model": MODEL, "result": "failed"}) >= 1)
                await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*tasks)
            return records, t_engine, live_at, vid

        # 1. a good version goes live under load
        records, t_engine, live_at, second = asyncio.run(under_load(v2, True, ()))
        counts = _check_streams(records, refs)
        assert second in counts and first in counts, counts
        # once a stream got the new version, no later stream got the old one
        later_old = [r for r in records if r.started_s > live_at and r.version != second]
        assert not later_old, f"{len(later_old)} streams started after the swap got old versions"
        delay = max(0.0, live_at - t_engine)
        print(f"\nhot reload: {len(records)} streams ({CLIENTS} concurrent) across the swap, "
              f"0 failed, per version {counts}; first stream on the new version started "
              f"{delay:.2f}s after its engine was published")

        # 2. a corrupt version (its bad file uploaded first): the previous one keeps serving
        records, _t, _live, broken = asyncio.run(under_load(bad, False, ("bs_skin.npz",)))
        assert broken != second
        counts = _check_streams(records, refs)
        assert set(counts) == {second}, counts

        # 3. a good version after the failed one goes live
        records, t_engine, live_at, fourth = asyncio.run(under_load(v4, True, ()))
        counts = _check_streams(records, refs)
        assert fourth in counts, counts
        assert pod.metric("a2f_inference_model_loads_total",
                          {"model": MODEL, "result": "failed"}) >= 1
        print(f"after a failed version: the next good one went live "
              f"{max(0.0, live_at - t_engine):.2f}s after its engine was published; "
              f"per version {counts}")
    finally:
        codes = pod.stop()
    assert codes["inference"] == 0, pod.tail("inference")


def test_reference_frames_differ_between_versions(tmp_path: Path) -> None:
    """The e2e check can tell versions apart: different seeds give different frames."""
    from a2f_standin.generate import generate

    root = tmp_path / "models"
    config = ServerConfig(models_root=root, ort_threads=1, metrics_port=-1, port=0)
    pcm = speech(1.0, RATE, seed=3)
    header = build_requests(pcm, RATE)[0].audio_stream_header
    outs = []
    for seed in (1, 2):
        folder = generate("regression", root / f"s{seed}" / MODEL, size="small", seed=seed)
        lm = load_model(folder, config)
        try:
            s = open_session(lm.runtime, header, identity=None, input_rate=RATE, output_fps=30)
            s.push_audio(pcm)
            s.end_of_audio()
            frames: list[np.ndarray] = []
            while not s.done:
                s.wait(0.5)
                frames.extend(np.asarray(f.weights) for f in s.take_frames())
            s.close()
        finally:
            lm.close()
        outs.append(np.stack(frames))
    assert outs[0].shape == outs[1].shape
    assert np.abs(outs[0] - outs[1]).max() > 1e-3
