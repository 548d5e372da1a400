"""Hostile and slow clients against a running server: none freezes it or keeps a slot.

Each case runs an attack next to a real-time good stream and a health check every 0.5 s on
the same server (loopback, in this process). For each: the good stream gets every frame with
no gap over 0.5 s, every health check answers within 1 s, the attacking stream ends with its
documented gRPC code and limit, and its slot is free within the documented bound.

The server's limits here are the documented settings, shortened so that the module stays
quick: ``idle_timeout_s`` 3, ``client_read_timeout_s`` 2, ``handshake_timeout_s`` 2,
``max_connection_idle_s`` 2; the keyframe caps and the receive-message cap are the defaults.
``max_streams`` is 5: four attacking streams plus the good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2f_inference.audio import synthetic_speech
from a2f_inference.client import build_requests, call_metadata
from a2f_inference.proto_gen.nvidia_ace import audio_pb2
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc, messages_pb2
from a2f_inference.server.limits import max_receive_bytes

from .conftest import REGRESSION, RunningServer, run, run_server

Req = messages_pb2.AudioWithEmotionStream
RATE = 16000
GOOD_CHUNK_S = 0.1
IDLE_S = 3.0
READ_TIMEOUT_S = 2.0
HANDSHAKE_S = 2.0
CONN_IDLE_S = 2.0
METHOD = "/nvidia_ace.services.a2f_controller.v1.A2FControllerService/ProcessAudioStream"


@pytest.fixture(scope="module")
def srv(standin_root: Path) -> Iterator[RunningServer]:
    with run_server(standin_root, max_streams=5, idle_timeout_s=IDLE_S,
                    client_read_timeout_s=READ_TIMEOUT_S, handshake_timeout_s=HANDSHAKE_S,
                    max_connection_idle_s=CONN_IDLE_S, max_clip_s=120.0) as s:
        yield s


def _header(rate: int = RATE) -> Req:
    return Req(audio_stream_header=messages_pb2.AudioWithEmotionStreamHeader(
        audio_header=audio_pb2.AudioHeader(
            audio_format=audio_pb2.AudioHeader.AUDIO_FORMAT_PCM, channel_count=1,
            samples_per_second=rate, bits_per_sample=16)))


_END = Req(end_of_audio=Req.EndOfAudio())
_REGRESSION_MD = call_metadata(REGRESSION, None)


async def _poll(predicate: Callable[[], bool], deadline_s: float, what: str) -> float:
    """Wait for ``predicate`` with a bounded deadline; the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > deadline_s:
            raise AssertionError(f"not within {deadline_s:g} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


@dataclass
class Guard:
    """What the good stream and the health checker saw during an attack."""

    frame_times: list[float] = field(default_factory=list)
    frames_expected: int = 0
    good_code: Any = None
    good_status: int = -1
    health: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert self.good_code == grpc.StatusCode.OK and self.good_status == 0, (
            self.good_code, self.good_status)
        assert len(self.frame_times) == self.frames_expected
        gaps = [b - a for a, b in zip(self.frame_times, self.frame_times[1:], strict=False)]
        assert max(gaps) <= 0.5, f"good stream: a gap of {max(gaps):.2f} s between frames"
        assert not self.health_failures, self.health_failures
        assert len(self.health) >= 2
        assert max(self.health) < 1.0, f"a health check took {max(self.health):.2f} s"


async def _good_stream(address: str, seconds: float, guard: Guard) -> None:
    """A real-time stream: chunk i goes out at start + i x chunk (absolute schedule)."""
    pcm = synthetic_speech(seconds, RATE)
    reqs = build_requests(pcm, RATE, chunk_s=GOOD_CHUNK_S)
    guard.frames_expected = round(seconds * 30)
    async with grpc.aio.insecure_channel(address) as ch:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)
        t0 = time.monotonic()

        async def gen() -> Any:
            # chunk i at start + i x chunk: an absolute schedule stays at real time on a
            # loaded machine (sleeping a fixed time between messages drifts behind)
            for i, req in enumerate(reqs):
                delay = t0 + max(0, i - 2) * GOOD_CHUNK_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield req

        call = stub.ProcessAudioStream(gen(), metadata=_REGRESSION_MD, timeout=60)
        async for msg in call:
            part = msg.WhichOneof("stream_part")
            if part == "animation_data":
                guard.frame_times.append(time.monotonic())
            elif part == "status":
                guard.good_status = msg.status.code
        guard.good_code = await call.code()


async def _health_loop(address: str, stop: asyncio.Event, guard: Guard) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while not stop.is_set():
            t = time.monotonic()
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if resp.status != health_pb2.HealthCheckResponse.SERVING:
                    guard.health_failures.append(f"status {resp.status}")
            except grpc.aio.AioRpcError as err:
                guard.health_failures.append(f"{err.code().name}: {err.details()}")
            guard.health.append(time.monotonic() - t)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def _guarded(srv: RunningServer, good_s: float,
                   attack: Callable[[], Awaitable[Any]]) -> tuple[Guard, Any]:
    """Run ``attack`` while a good stream and the health checker run; both must be clean."""
    guard = Guard()
    stop = asyncio.Event()
    health = asyncio.create_task(_health_loop(srv.address, stop, guard))
    good = asyncio.create_task(_good_stream(srv.address, good_s, guard))
    await _poll(lambda: srv.server.registry.open_streams >= 1, 10, "the good stream opened")
    try:
        result = await attack()
    finally:
        await good
        stop.set()
        await health
    guard.check()
    return guard, result


def _sync_call(address: str, requests: Iterable[Req] | Iterable[bytes],
               metadata: tuple[tuple[str, str], ...] = _REGRESSION_MD,
               raw: bool = False) -> tuple[grpc.StatusCode, str]:
    """A blocking client (its status is the server's own); ``raw``: requests are bytes."""
    with grpc.insecure_channel(address) as ch:
        call_fn = ch.stream_stream(
            METHOD,
            request_serializer=(lambda b: b) if raw else Req.SerializeToString,
            response_deserializer=messages_pb2.A2F3DAnimationDataStream.FromString)
        responses = call_fn(iter(requests), metadata=metadata, timeout=60)
        try:
            for _ in responses:
                pass
            return responses.code(), responses.details() or ""
        except grpc.RpcError as err:
            return err.code(), err.details() or ""


def _slot_count(srv: RunningServer) -> int:
    return srv.server.registry.open_streams


def test_100k_keyframe_message(srv: RunningServer) -> None:
    big = Req(audio_with_emotion=messages_pb2.AudioWithEmotion(
        audio_buffer=synthetic_speech(0.5, RATE)))
    for i in range(100_000):  # time codes descending, empty maps: the message
        big.audio_with_emotion.emotions.add(time_code=float(100_000 - i))
    assert big.ByteSize() < max_receive_bytes(srv.server.config)  # reaches the servicer

    async def attack() -> tuple[grpc.StatusCode, str]:
        out = await asyncio.to_thread(_sync_call, srv.address, [_header(), big, _END])
        await _poll(lambda: _slot_count(srv) <= 1, 2.0, "the attacker's slot freed")
        return out

    cuts = srv.sample("a2f_inference_limit_cuts_total", {"limit": "max_keyframes_per_message"})
    _, (code, details) = run(_guarded(srv, 3.0, attack))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "100000 emotion keyframes" in details and "max_keyframes_per_message" in details
    assert "300" in details
    assert srv.sample("a2f_inference_limit_cuts_total",
                      {"limit": "max_keyframes_per_message"}) == cuts + 1


def _audio_with_emotion_bytes(body: bytes) -> bytes:
    """An encoded AudioWithEmotionStream whose audio_with_emotion is ``body`` (encoded
    entries of a repeated field are the entries one after the other)."""
    field_no = Req.DESCRIPTOR.fields_by_name["audio_with_emotion"].number
    size, varint = len(body), bytearray()
    while True:
        b = size & 0x7F
        size >>= 7
        varint.append(b | (0x80 if size else 0))
        if not size:
            break
    return bytes([field_no << 3 | 2]) + bytes(varint) + body


def test_16mib_keyframe_message(srv: RunningServer) -> None:
    one = messages_pb2.AudioWithEmotion(emotions=[messages_pb2.EmotionWithTimeCode(
        time_code=1.0, emotion={"joy": 0.5, "anger": 0.25})]).SerializeToString()
    msg = _audio_with_emotion_bytes(one * (16 * 1024 * 1024 // len(one)))
    assert len(msg) >= 16 * 1024 * 1024 - 64
    assert len(Req.FromString(_audio_with_emotion_bytes(one * 3)).audio_with_emotion.emotions) \
        == 3

    async def attack() -> tuple[grpc.StatusCode, str]:
        reqs = [_header().SerializeToString(), msg, _END.SerializeToString()]
        out = await asyncio.to_thread(_sync_call, srv.address, reqs, raw=True)
        await _poll(lambda: _slot_count(srv) <= 1, 2.0, "the attacker's slot freed")
        return out

    _, (code, details) = run(_guarded(srv, 3.0, attack))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert str(max_receive_bytes(srv.server.config)) in details, details


def test_empty_message_trickle_frees_the_slots(srv: RunningServer) -> None:
    empty = Req(audio_with_emotion=messages_pb2.AudioWithEmotion())
    stop = threading.Event()

    def trickle() -> Iterator[Req]:
        yield _header()
        while not stop.wait(2.0):  # an empty audio_with_emotion every 2 s, forever
            yield empty

    async def attack() -> list[tuple[grpc.StatusCode, str]]:
        idle = srv.sample("a2f_inference_limit_cuts_total", {"limit": "idle_timeout_s"})
        tasks = [asyncio.create_task(asyncio.to_thread(_sync_call, srv.address, trickle()))
                 for _ in range(4)]
        try:
            await _poll(lambda: _slot_count(srv) == 5, 5.0, "four trickling streams open")
            # every slot is taken: a fifth client is refused
            code, details = await asyncio.to_thread(
                _sync_call, srv.address, [_header(), _END])
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            # cut at the idle timeout although they keep sending: documented bound
            # idle_timeout_s + the time their first message took
            took = await _poll(
                lambda: srv.sample("a2f_inference_limit_cuts_total",
                                   {"limit": "idle_timeout_s"}) >= idle + 4,
                IDLE_S + 3.0, "the four trickling streams cut")
            assert took <= IDLE_S + 3.0
            await _poll(lambda: _slot_count(srv) <= 1, 1.0, "their slots freed")
            # a fifth client gets in now
            pcm = synthetic_speech(0.5, RATE)
            code, details = await asyncio.to_thread(
                _sync_call, srv.address, build_requests(pcm, RATE))
            assert code == grpc.StatusCode.OK, (code, details)
            return [await t for t in tasks]
        finally:
            stop.set()

    _, results = run(_guarded(srv, 8.0, attack))
    for code, details in results:
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
        assert f"no audio from the client for {IDLE_S:g} s (idle_timeout_s" in details


def test_never_reading_client_is_cut(srv: RunningServer) -> None:
    # 6 s of audio sent at once: ~180 frames of ~1.5 KB wait for a client that never reads
    # them, more than its transport takes (BDP probing off: the stream window stays 64 KiB)
    reqs = build_requests(synthetic_speech(6.0, RATE), RATE, chunk_s=1.0)

    async def attack() -> tuple[grpc.StatusCode, str, float]:
        cut_limit = {"limit": "client_read_timeout_s"}
        before = srv.sample("a2f_inference_limit_cuts_total", cut_limit)
        async with grpc.aio.insecure_channel(srv.address,
                                             options=[("grpc.http2.bdp_probe", 0)]) as ch:
            stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)

            async def gen() -> Any:
                for r in reqs:
                    yield r

            call = stub.ProcessAudioStream(gen(), metadata=_REGRESSION_MD, timeout=90)
            await _poll(lambda: _slot_count(srv) == 2, 5.0, "the attacker opened")
            # never reads: cut after client_read_timeout_s once the server's writes stall
            await _poll(lambda: srv.sample("a2f_inference_limit_cuts_total", cut_limit)
                        >= before + 1, 30.0, "the never-reading client cut")
            freed = await _poll(lambda: _slot_count(srv) <= 1, 0.5, "its slot freed")
            # what the client finds when it reads at last: the frames sent before, then the
            # status
            try:
                async with asyncio.timeout(20):
                    async for _ in call:
                        pass
                code, details = await call.code(), await call.details()
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
        return code, details, freed

    _, (code, details, _freed) = run(_guarded(srv, 6.0, attack))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert "client_read_timeout_s" in details and f"{READ_TIMEOUT_S:g} s" in details


def test_idle_connections_are_closed(srv: RunningServer) -> None:
    host, port = srv.address.rsplit(":", 1)

    async def attack() -> None:
        # 200 TCP connections that never start HTTP/2: closed at the handshake timeout
        conns = [await asyncio.open_connection(host, int(port)) for _ in range(200)]
        # 10 HTTP/2 connections with no call: closed (GOAWAY) at max_connection_idle_s
        channels = [grpc.aio.insecure_channel(srv.address,
                                              options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(10)]
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 5)

        async def closed(reader: asyncio.StreamReader) -> None:
            with contextlib.suppress(ConnectionResetError):  # the server's SETTINGS, then EOF
                while await reader.read(4096):
                    pass

        try:
            async with asyncio.timeout(HANDSHAKE_S + 4.0):
                await asyncio.gather(*(closed(r) for r, _w in conns))
            await _poll(lambda: all(
                ch.get_state() != grpc.ChannelConnectivity.READY for ch in channels),
                CONN_IDLE_S + 4.0, "idle HTTP/2 connections closed")
        finally:
            for _r, w in conns:
                w.close()
            for ch in channels:
                await ch.close()

    run(_guarded(srv, 5.0, attack))
    # the server still takes new connections
    with socket.create_connection((host, int(port)), timeout=2):
        pass



def test_slow_feed_and_stream_wall_time(standin_root: Path) -> None:
    """A client at half real time is cut by min_feed_rate after slow_feed_s; a real-time
    client longer than max_stream_s is cut at max_stream_s (both short here)."""
    pcm = synthetic_speech(8.0, RATE)

    def paced(step_s: float, chunk_s: float) -> Iterator[Req]:
        reqs = build_requests(pcm, RATE, chunk_s=chunk_s)
        t0 = time.monotonic()
        for i, req in enumerate(reqs):
            delay = t0 + max(0, i - 1) * step_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield req

    with run_server(standin_root, slow_feed_s=1.0, max_stream_s=4.0) as s:
        slow = _sync_call(s.address, paced(0.4, 0.2))  # 0.5 audio s per wall s
        long = _sync_call(s.address, paced(0.2, 0.2))  # real time, 8 s of audio
        assert s.sample("a2f_inference_limit_cuts_total", {"limit": "min_feed_rate"}) == 1
        assert s.sample("a2f_inference_limit_cuts_total", {"limit": "max_stream_s"}) == 1
        run(_poll(lambda: s.server.registry.open_streams == 0, 1.0, "both slots freed"))
    assert slow[0] == grpc.StatusCode.DEADLINE_EXCEEDED, slow
    assert "min_feed_rate" in slow[1] and "for more than 1 s (slow_feed_s)" in slow[1]
    assert long[0] == grpc.StatusCode.DEADLINE_EXCEEDED, long
    assert "stream open longer than 4 s (max_stream_s)" in long[1]
