"""The load generator: N concurrent gRPC streams, paced at real time or as fast as possible.

Each worker runs streams of synthetic speech back to back until the duration has passed and
records every frame's latency: from sending the audio chunk the frame needs (its time code
plus the model's look-ahead) to receiving the frame.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from a2f_inference.audio import synthetic_speech
from a2f_inference.client import build_requests, call_metadata, stream_audio
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc


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
