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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2f_bench.load import ServeBenchResult, drive
from a2f_bench.pipeline import bench_pipeline
from a2f_bench.proc import free_port, proc_cpu_s
from a2f_bench.standins import A2E_NAME, MODEL_NAMES, link_a2e, linked_standin
from a2f_engine.onnxruntime_engine import cpu_plan
from a2f_inference.proto_gen.a2f_admin import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)


class ServerSubprocess:
    """``a2f-inference`` on 127.0.0.1 in a child process (its own CPU accounting and GIL)."""

    def __init__(self, root: Path, model: str, extra: Sequence[str] = (),
                 log_path: Path | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "a2f_inference.server.cli", "--models-root", str(root),
               "--model-path", str(root / model), "--host", "127.0.0.1", "--port",
               str(self.port), "--metrics-port", "-1", *extra]
        self._log = open(log_path or os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_serving(self, timeout_s: float = 120) -> None:
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


def library_throughput(folder: Path, *, streams: int, clip_s: float, chunk_s: float,
                       max_batch: int, max_wait_s: float, workers: int, threads: int
                       ) -> tuple[float, float] | None:
    """Frames/s of the pipeline library alone on the same model, no gRPC (``a2f-bench
    pipeline``'s measurement, same streams, audio length, inference workers and threads as
    the server), or None if it failed."""
    try:
        r = bench_pipeline(folder, streams=streams, seconds=clip_s, threads=threads,
                           workers=workers, max_batch=max_batch or None,
                           max_wait_s=max_wait_s, chunk_s=chunk_s)
        p = r["pipeline"]
        return float(p["fps"]), float(r["frames"]) / max(1e-9, float(p["cpu_s"]))
    except Exception:
        log.exception("library throughput measurement failed")
        return None


def run_serve_bench(args: argparse.Namespace, a2e_size: str | None = None
                    ) -> ServeBenchResult:
    """One run; ``a2e_size``: serve the A2E stand-in of that size beside the face model."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / f"serve-models-{args.kind}-{args.size}{'-a2e' if a2e_size else ''}"
    folder = linked_standin(args.kind, args.size, root)
    if a2e_size:
        link_a2e(root, a2e_size)
    name = folder.name
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
        lookahead = info.lookahead_s
        if a2e_size:  # a frame also waits for its A2E window (centred: T/2 past it)
            lookahead = max(lookahead, model_info(server.address, A2E_NAME).lookahead_s)
        cpu0 = proc_cpu_s(server.proc.pid)
        client0 = time.process_time()
        log.info("server up on %s: %s %s, max batch %d, look-ahead %.3fs", server.address,
                 info.kind, info.version, info.max_batch, info.lookahead_s)
        res = asyncio.run(drive(
            server.address, name, streams=args.streams, duration_s=args.duration_s,
            clip_s=args.clip_s, chunk_s=args.chunk_s, realtime=args.mode == "realtime",
            lookahead_s=lookahead, realtime_threshold_s=args.realtime_threshold_s))
        res.server_max_batch = info.max_batch
        res.server_cpu_s = proc_cpu_s(server.proc.pid) - cpu0
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
    p.add_argument("--a2e", choices=("small", "full"), default=None,
                   help="run twice, without and with an Audio2Emotion stand-in of this size "
                        "beside the face model, and report the cost A2E adds per frame")
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
