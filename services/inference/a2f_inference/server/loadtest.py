"""``a2f-bench serve``: the server under load, compared with the pipeline library in one run.

Starts ``a2f-inference`` as a subprocess on 127.0.0.1 over a generated stand-in, drives N
concurrent streams for a bounded time (paced at real time, or as fast as possible), then
measures the pipeline library's own throughput on the same model in this process. Reports
streams held at real time, frames/s, p50/p99 frame latency (from sending the audio chunk a
frame needs to receiving the frame), errors, and served/library frames-per-second ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from a2f_inference.client import build_requests, call_metadata, stream_audio, synthetic_speech
from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc

log = logging.getLogger(__name__)

MODEL_NAMES = {"regression": "a23", "diffusion": "multi-diffusion"}


@dataclass
class ServeBenchResult:
    kind: str
    size: str
    mode: str
    streams: int
    duration_s: float
    clip_s: float
    chunk_s: float
    started: int = 0
    completed: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    wall_s: float = 0.0
    frames_per_s: float = 0.0
    realtime_threshold_s: float = 0.1
    streams_at_realtime: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    first_frame_p50_ms: float = 0.0
    library_frames_per_s: float | None = None
    served_to_library: float | None = None
    # Frames per CPU-second (server process / library process): robust to other load on the
    # machine, which wall-clock frames/s are not.
    server_cpu_s: float = 0.0
    frames_per_cpu_s: float = 0.0
    library_frames_per_cpu_s: float | None = None
    served_to_library_cpu: float | None = None
    server_max_batch: int = 0
    workers: int = 0  # inference workers of the server and the library run
    ort_threads: int = 0  # ONNX Runtime intra-op threads per worker
    # CPU of this process while it drove the streams (the load generator shares the cores)
    client_cpu_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def ensure_standin(kind: str, size: str, root: Path) -> Path:
    """``root/<model>``: a link to the cached stand-in of ``a2f-bench`` (made once)."""
    from a2f_inference.bench import standin_folder

    target = standin_folder(kind, size).resolve()
    root.mkdir(parents=True, exist_ok=True)
    link = root / MODEL_NAMES[kind]
    if not link.exists() or link.resolve() != target:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return link


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerSubprocess:
    """``a2f-inference`` on 127.0.0.1 in a child process (its own CPU accounting and GIL)."""

    def __init__(self, root: Path, model: str, extra: Sequence[str] = (),
                 log_path: Path | None = None) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "a2f_inference.server.cli", "--models-root", str(root),
               "--model-path", str(root / model), "--host", "127.0.0.1", "--port",
               str(self.port), "--metrics-port", "-1", *extra]
        self._log = open(log_path or os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_serving(self, timeout_s: float = 120) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode} at start")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError("server did not become SERVING in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def model_info(address: str, name: str) -> admin_pb2.ModelInfo:
    with grpc.insecure_channel(address) as ch:
        resp = admin_pb2_grpc.ModelAdminStub(ch).ListModels(admin_pb2.ListModelsRequest(),
                                                            timeout=10)
    for m in resp.models:
        if m.name == name:
            return m
    raise RuntimeError(f"model {name} not served")


async def drive(address: str, model: str, *, streams: int, duration_s: float, clip_s: float,
                chunk_s: float, realtime: bool, lookahead_s: float,
                realtime_threshold_s: float) -> ServeBenchResult:
    """N workers each run streams back to back until ``duration_s`` has passed."""
    rate = 16000
    chunk_bytes = int(rate * chunk_s) * 2
    res = ServeBenchResult("", "", "realtime" if realtime else "max", streams, duration_s,
                           clip_s, chunk_s, realtime_threshold_s=realtime_threshold_s)
    latencies: list[float] = []
    first_frames: list[float] = []
    codes: Counter[str] = Counter()
    deadline = time.perf_counter() + duration_s

    async def worker(stub: audio2face_pb2_grpc.A2FControllerServiceStub, i: int) -> None:
        # Clip lengths vary from 0.8 to 1.2 x clip_s across workers so that streams do not all
        # end (and restart) together; starts are spread over one chunk period.
        seconds = clip_s * (0.8 + 0.4 * i / max(1, streams - 1)) if streams > 1 else clip_s
        requests = build_requests(synthetic_speech(seconds, rate, seed=i), rate,
                                  chunk_s=chunk_s)
        n_chunks = len(requests) - 2
        # Audio seconds received after chunk j (request index j + 1).
        cum_s = np.minimum((np.arange(1, n_chunks + 1) * chunk_bytes) / 2 / rate, seconds)
        if realtime:
            await asyncio.sleep(chunk_s * i / max(1, streams))
        while time.perf_counter() < deadline:
            sends: list[float] = []
            res.started += 1
            r = await stream_audio(stub, requests, metadata=call_metadata(model, None),
                                   pace_s=chunk_s if realtime else 0.0, send_times=sends,
                                   timeout_s=max(60.0, 4 * clip_s), keep_data=False)
            if not r.ok:
                res.errors += 1
                codes[r.grpc_code.name if r.grpc_code else "NO_STATUS"] += 1
                continue
            res.completed += 1
            res.frames += len(r.time_codes)
            chunk_sent = np.asarray(sends[1:1 + n_chunks])
            need = np.minimum(np.asarray(r.time_codes) + lookahead_s, seconds)
            idx = np.minimum(np.searchsorted(cum_s, need - 1e-9), n_chunks - 1)
            lat = np.asarray(r.frame_arrival_s) - chunk_sent[idx]
            latencies.extend(lat.tolist())
            if len(lat):
                first_frames.append(r.frame_arrival_s[0] - sends[0])
                if realtime and float(np.percentile(lat, 99)) <= realtime_threshold_s:
                    res.streams_at_realtime += 1

    t0 = time.perf_counter()
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, min(8, streams // 25)))]
    try:
        stubs = [audio2face_pb2_grpc.A2FControllerServiceStub(c) for c in channels]
        await asyncio.gather(*(worker(stubs[i % len(stubs)], i) for i in range(streams)))
    finally:
        for c in channels:
            await c.close()
    res.wall_s = time.perf_counter() - t0
    res.frames_per_s = res.frames / res.wall_s if res.wall_s > 0 else 0.0
    res.error_codes = dict(codes)
    if latencies:
        arr = np.asarray(latencies) * 1000
        res.latency_p50_ms = float(np.percentile(arr, 50))
        res.latency_p99_ms = float(np.percentile(arr, 99))
        res.latency_max_ms = float(arr.max())
    if first_frames:
        res.first_frame_p50_ms = float(np.percentile(first_frames, 50) * 1000)
    return res


def library_throughput(folder: Path, *, streams: int, clip_s: float, chunk_s: float,
                       max_batch: int, max_wait_s: float, workers: int, threads: int
                       ) -> tuple[float, float] | None:
    """Frames/s of the pipeline library alone on the same model, no gRPC (``a2f-bench
    pipeline``'s measurement, same streams, audio length, inference workers and threads as
    the server), or None if it failed."""
    from a2f_inference.bench import bench_pipeline

    try:
        r = bench_pipeline(folder, streams=streams, seconds=clip_s, threads=threads,
                           workers=workers, max_batch=max_batch or None,
                           max_wait_s=max_wait_s, chunk_s=chunk_s)
        p = r["pipeline"]
        return float(p["fps"]), float(r["frames"]) / max(1e-9, float(p["cpu_s"]))
    except Exception:
        log.exception("library throughput measurement failed")
        return None


def run_serve_bench(args: argparse.Namespace) -> ServeBenchResult:
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / f"serve-models-{args.kind}-{args.size}"
    folder = ensure_standin(args.kind, args.size, root)
    name = folder.name
    from a2f_engine.onnxruntime_engine import cpu_plan

    workers, threads = cpu_plan(args.workers, args.threads)
    extra = ["--max-streams", str(max(args.streams + 8, 64)), "--engine-policy",
             "onnx-fallback", "--max-wait-s", str(args.max_wait_s), "--inference-workers",
             str(workers), "--ort-threads", str(threads)]
    if args.max_batch:
        extra += ["--max-batch", str(args.max_batch)]
    server = ServerSubprocess(root, name, extra, log_path=work / "server.log")
    try:
        server.wait_serving()
        info = model_info(server.address, name)
        cpu0 = _proc_cpu_s(server.proc.pid)
        client0 = time.process_time()
        log.info("server up on %s: %s %s, max batch %d, look-ahead %.3fs", server.address,
                 info.kind, info.version, info.max_batch, info.lookahead_s)
        res = asyncio.run(drive(
            server.address, name, streams=args.streams, duration_s=args.duration_s,
            clip_s=args.clip_s, chunk_s=args.chunk_s, realtime=args.mode == "realtime",
            lookahead_s=info.lookahead_s, realtime_threshold_s=args.realtime_threshold_s))
        res.server_max_batch = info.max_batch
        res.server_cpu_s = _proc_cpu_s(server.proc.pid) - cpu0
        res.client_cpu_s = time.process_time() - client0
        res.frames_per_cpu_s = res.frames / max(1e-9, res.server_cpu_s)
    finally:
        server.stop()
    res.kind, res.size = args.kind, args.size
    res.workers, res.ort_threads = workers, threads
    if not args.no_library:
        log.info("measuring the pipeline library alone on the same model")
        lib = library_throughput(
            folder, streams=args.streams, clip_s=args.clip_s, chunk_s=args.chunk_s,
            max_batch=res.server_max_batch, max_wait_s=args.max_wait_s, workers=workers,
            threads=threads)
        if lib is not None:
            res.library_frames_per_s, res.library_frames_per_cpu_s = lib
            res.served_to_library = res.frames_per_s / res.library_frames_per_s
            res.served_to_library_cpu = res.frames_per_cpu_s / res.library_frames_per_cpu_s
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=sorted(MODEL_NAMES), default="regression")
    p.add_argument("--size", choices=("small", "full"), default="small")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams (default 8)")
    p.add_argument("--mode", choices=("realtime", "max"), default="realtime",
                   help="pace audio at real time, or send as fast as possible")
    p.add_argument("--duration-s", type=float, default=20.0,
                   help="stop starting new streams after this long (default 20)")
    p.add_argument("--clip-s", type=float, default=5.0, help="seconds of audio per stream")
    p.add_argument("--chunk-s", type=float, default=0.1, help="seconds of audio per message")
    p.add_argument("--max-batch", type=int, default=0, help="server max batch (0 = model's)")
    p.add_argument("--workers", type=int, default=0,
                   help="inference workers of the server and the library run (default 0: "
                   "the server's automatic plan)")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads per worker (default 0: automatic)")
    p.add_argument("--max-wait-s", type=float, default=0.002,
                   help="batch fill wait of the server and the library run (default 0.002)")
    p.add_argument("--realtime-threshold-s", type=float, default=0.1,
                   help="a stream is held at real time when its p99 frame latency is at most "
                   "this (default 0.1)")
    p.add_argument("--no-library", action="store_true",
                   help="skip the library-only throughput measurement")
    p.add_argument("--work-dir", default=os.path.join(".a2f-local", "bench-serve"),
                   help="where the server's models root and log go (default %(default)s)")
    p.add_argument("--compare-transports", action="store_true",
                   help="instead: the gRPC layer alone (canned frames, same traffic) on "
                   "grpc.aio and on the thread-pool server")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def report(res: ServeBenchResult, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(res))
    lib = (f"{res.library_frames_per_s:.0f} frames/s (served/library "
           f"{res.served_to_library:.2f}); {res.library_frames_per_cpu_s:.0f} frames per CPU-s "
           f"(served/library {res.served_to_library_cpu:.2f})"
           if res.library_frames_per_s and res.library_frames_per_cpu_s
           and res.served_to_library_cpu else "not measured")
    lines = [
        f"a2f-bench serve: {res.size} {res.kind}, {res.streams} streams, {res.mode}, "
        f"{res.duration_s:g}s, clips {res.clip_s:g}s in {res.chunk_s:g}s chunks; "
        f"{res.workers} inference worker(s) x {res.ort_threads} ONNX Runtime thread(s)",
        f"  streams: {res.started} started, {res.completed} completed, {res.errors} errors "
        f"{res.error_codes or ''}".rstrip(),
        f"  served: {res.frames} frames in {res.wall_s:.1f}s = {res.frames_per_s:.0f} frames/s; "
        f"server CPU {res.server_cpu_s:.1f}s = {res.frames_per_cpu_s:.0f} frames per CPU-s; "
        f"load generator CPU {res.client_cpu_s:.1f}s",
        f"  frame latency: p50 {res.latency_p50_ms:.1f} ms, p99 {res.latency_p99_ms:.1f} ms, "
        f"max {res.latency_max_ms:.1f} ms; first frame p50 {res.first_frame_p50_ms:.0f} ms",
    ]
    if res.mode == "realtime":
        lines.append(f"  held at real time (p99 <= {res.realtime_threshold_s * 1000:.0f} ms): "
                     f"{res.streams_at_realtime} of {res.completed} streams")
    lines.append(f"  library alone: {lib}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.compare_transports:
        figures = compare_transports(args.streams, args.clip_s, args.duration_s)
        print(json.dumps(figures) if args.json else "\n".join(
            f"{k:10s} {v['frames_per_s']:8.0f} frames/s, server CPU "
            f"{v['server_cpu_s_per_1000_frames']:.2f} s per 1000 frames, errors {v['errors']}"
            for k, v in figures.items()), flush=True)
        return 0
    res = run_serve_bench(args)
    print(report(res, args.json), flush=True)
    return 0 if res.errors == 0 else 1


# -- grpc.aio or the thread-pool server: the gRPC layer alone, same traffic -----------------------
def _echo_frames(chunk: bytes, t0: float) -> list[Any]:
    """What the real server sends for a 0.1 s chunk: three frames of 68 weights + audio."""
    from a2f_inference.proto_gen.nvidia_ace import animation_pb2
    from a2f_inference.proto_gen.nvidia_audio2face_3d import messages_pb2

    out = []
    step = max(2, len(chunk) // 3 // 2 * 2)
    for i in range(3):
        t = t0 + i / 30
        out.append(messages_pb2.A2F3DAnimationDataStream(animation_data=animation_pb2.AnimationData(
            skel_animation=animation_pb2.SkelAnimation(blend_shape_weights=[
                animation_pb2.FloatArrayWithTimeCode(time_code=t, values=[0.25] * 68)]),
            audio=animation_pb2.AudioWithTimeCode(time_code=t,
                                                  audio_buffer=chunk[i * step:(i + 1) * step]))))
    return out


def _transport_server(flavor: str, port: int) -> None:
    """Serve ProcessAudioStream with canned frames, on grpc.aio or the thread-pool server."""
    from concurrent import futures

    from a2f_inference.proto_gen.nvidia_ace import status_pb2
    from a2f_inference.proto_gen.nvidia_audio2face_3d import messages_pb2

    def tail() -> list[Any]:
        return [messages_pb2.A2F3DAnimationDataStream(event=messages_pb2.Event()),
                messages_pb2.A2F3DAnimationDataStream(status=status_pb2.Status())]

    header = messages_pb2.A2F3DAnimationDataStream(
        animation_data_stream_header=messages_pb2.A2F3DAnimationDataStreamHeader())

    if flavor == "aio":
        class AioServicer(audio2face_pb2_grpc.A2FControllerServiceServicer):
            async def ProcessAudioStream(self, request_iterator: Any, context: Any) -> Any:
                yield header
                t = 0.0
                async for req in request_iterator:
                    if req.HasField("audio_with_emotion"):
                        for m in _echo_frames(req.audio_with_emotion.audio_buffer, t):
                            yield m
                        t += 0.1
                for m in tail():
                    yield m

        async def serve() -> None:
            server = grpc.aio.server()
            audio2face_pb2_grpc.add_A2FControllerServiceServicer_to_server(AioServicer(), server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()

        asyncio.run(serve())
        return

    class SyncServicer(audio2face_pb2_grpc.A2FControllerServiceServicer):
        def ProcessAudioStream(self, request_iterator: Any, context: Any) -> Any:
            yield header
            t = 0.0
            for req in request_iterator:
                if req.HasField("audio_with_emotion"):
                    yield from _echo_frames(req.audio_with_emotion.audio_buffer, t)
                    t += 0.1
            yield from tail()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    audio2face_pb2_grpc.add_A2FControllerServiceServicer_to_server(SyncServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def compare_transports(streams: int, clip_s: float, duration_s: float) -> dict[str, Any]:
    """Frames/s and server CPU of each gRPC server flavour under the same load (max speed)."""
    out: dict[str, Any] = {}
    for flavor in ("aio", "threadpool"):
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "a2f_inference.server.loadtest",
                                 "transport-server", flavor, str(port)])
        try:
            address = f"127.0.0.1:{port}"
            with grpc.insecure_channel(address) as ch:
                grpc.channel_ready_future(ch).result(timeout=30)
            cpu0 = _proc_cpu_s(proc.pid)
            res = asyncio.run(drive(address, "", streams=streams, duration_s=duration_s,
                                    clip_s=clip_s, chunk_s=0.1, realtime=False,
                                    lookahead_s=0.0, realtime_threshold_s=0.1))
            cpu = _proc_cpu_s(proc.pid) - cpu0
            out[flavor] = {"frames_per_s": res.frames_per_s, "errors": res.errors,
                           "server_cpu_s_per_1000_frames": 1000 * cpu / max(1, res.frames),
                           "latency_p50_ms": res.latency_p50_ms,
                           "latency_p99_ms": res.latency_p99_ms}
            log.info("%s: %.0f frames/s, server CPU %.2f s per 1000 frames", flavor,
                     res.frames_per_s, 1000 * cpu / max(1, res.frames))
        finally:
            proc.terminate()
            proc.wait(10)
    return out


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "transport-server":
    _transport_server(sys.argv[2], int(sys.argv[3]))
