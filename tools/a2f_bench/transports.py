"""The gRPC layer alone: grpc.aio or the thread-pool server under the same traffic.

Each flavour serves ``ProcessAudioStream`` with canned frames (what the real server sends for
a 0.1 s chunk: three frames of 68 weights and the audio) in a child process on 127.0.0.1;
the load generator drives it as fast as possible and the child's CPU time is measured.
Run a server alone with ``python -m a2f_bench.transports FLAVOR PORT``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc

from a2f_bench.load import drive
from a2f_bench.proc import free_port, proc_cpu_s
from a2f_inference.proto_gen.nvidia_ace import animation_pb2, status_pb2
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc, messages_pb2

log = logging.getLogger(__name__)

FLAVORS = ("aio", "threadpool")


def canned_frames(chunk: bytes, t0: float) -> list[messages_pb2.A2F3DAnimationDataStream]:
    """What the real server sends for a 0.1 s chunk: three frames of 68 weights + audio."""
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


def _header() -> messages_pb2.A2F3DAnimationDataStream:
    return messages_pb2.A2F3DAnimationDataStream(
        animation_data_stream_header=messages_pb2.A2F3DAnimationDataStreamHeader())


def _tail() -> list[messages_pb2.A2F3DAnimationDataStream]:
    return [messages_pb2.A2F3DAnimationDataStream(event=messages_pb2.Event()),
            messages_pb2.A2F3DAnimationDataStream(status=status_pb2.Status())]


class AioCannedServicer(audio2face_pb2_grpc.A2FControllerServiceServicer):
    """grpc.aio: canned frames for every audio chunk received."""

    async def ProcessAudioStream(
            self, request_iterator: Any, context: Any
    ) -> AsyncIterator[messages_pb2.A2F3DAnimationDataStream]:
        yield _header()
        t = 0.0
        async for req in request_iterator:
            if req.HasField("audio_with_emotion"):
                for m in canned_frames(req.audio_with_emotion.audio_buffer, t):
                    yield m
                t += 0.1
        for m in _tail():
            yield m


class SyncCannedServicer(audio2face_pb2_grpc.A2FControllerServiceServicer):
    """The thread-pool server: canned frames for every audio chunk received."""

    def ProcessAudioStream(self, request_iterator: Any, context: Any
                           ) -> Iterator[messages_pb2.A2F3DAnimationDataStream]:
        yield _header()
        t = 0.0
        for req in request_iterator:
            if req.HasField("audio_with_emotion"):
                yield from canned_frames(req.audio_with_emotion.audio_buffer, t)
                t += 0.1
        yield from _tail()


async def _serve_aio(port: int) -> None:
    server = grpc.aio.server()
    audio2face_pb2_grpc.add_A2FControllerServiceServicer_to_server(AioCannedServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_canned(flavor: str, port: int) -> None:
    """Serve ProcessAudioStream with canned frames on 127.0.0.1:``port`` until killed."""
    if flavor == "aio":
        asyncio.run(_serve_aio(port))
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    audio2face_pb2_grpc.add_A2FControllerServiceServicer_to_server(SyncCannedServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def compare_transports(streams: int, clip_s: float, duration_s: float) -> dict[str, Any]:
    """Frames/s and server CPU of each gRPC server flavour under the same load (max speed)."""
    out: dict[str, Any] = {}
    for flavor in FLAVORS:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "a2f_bench.transports", flavor,
                                 str(port)])
        try:
            address = f"127.0.0.1:{port}"
            with grpc.insecure_channel(address) as ch:
                grpc.channel_ready_future(ch).result(timeout=30)
            cpu0 = proc_cpu_s(proc.pid)
            res = asyncio.run(drive(address, "", streams=streams, duration_s=duration_s,
                                    clip_s=clip_s, chunk_s=0.1, realtime=False,
                                    lookahead_s=0.0, realtime_threshold_s=0.1))
            cpu = proc_cpu_s(proc.pid) - cpu0
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


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in FLAVORS:
        sys.exit(f"usage: python -m a2f_bench.transports {{{'|'.join(FLAVORS)}}} PORT")
    serve_canned(sys.argv[1], int(sys.argv[2]))
