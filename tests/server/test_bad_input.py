"""Every kind of bad input ends only its own stream, with an ERROR Status and the fitting code.

Each case runs next to a well-formed stream on the same server, which must complete.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from a2f_inference.audio import synthetic_speech
from a2f_inference.client import StreamResult, build_requests, stream_audio
from a2f_inference.proto_gen.nvidia_ace import audio_pb2, status_pb2
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc, messages_pb2

from .conftest import DIFFUSION, REGRESSION, RunningServer, one_stream, run, run_server

Req = messages_pb2.AudioWithEmotionStream


def _header(rate: int = 16000, channels: int = 1, bits: int = 16, fmt: int = 0) -> Req:
    return Req(audio_stream_header=messages_pb2.AudioWithEmotionStreamHeader(
        audio_header=audio_pb2.AudioHeader(audio_format=fmt, channel_count=channels,  # type: ignore[arg-type]
                                           samples_per_second=rate, bits_per_sample=bits)))


def _audio(seconds: float, rate: int = 16000) -> Req:
    return Req(audio_with_emotion=messages_pb2.AudioWithEmotion(
        audio_buffer=synthetic_speech(seconds, rate)))


_END = Req(end_of_audio=Req.EndOfAudio())


def _raw_sync(address: str, requests: list[Req], metadata: tuple[tuple[str, str], ...],
              pace_s: float) -> StreamResult:
    """The blocking client (as NVIDIA's sample uses): its status is the server's own.

    (grpc.aio's client can replace the server's status with a local INTERNAL when a write is
    in flight as the server ends the call, so the error cases use the blocking API.)
    """
    r = StreamResult(started_s=time.perf_counter())

    def gen():
        for i, req in enumerate(requests):
            if pace_s and i > 1:
                time.sleep(pace_s)
            yield req

    with grpc.insecure_channel(address) as ch:
        call = audio2face_pb2_grpc.A2FControllerServiceStub(ch).ProcessAudioStream(
            gen(), metadata=metadata, timeout=60)
        try:
            for msg in call:
                part = msg.WhichOneof("stream_part")
                r.order.append(part or "")
                if part == "animation_data":
                    r.time_codes.append(
                        msg.animation_data.skel_animation.blend_shape_weights[0].time_code)
                    r.frame_arrival_s.append(time.perf_counter())
                elif part == "status":
                    r.status_code = msg.status.code
                    r.status_message = msg.status.message
            r.grpc_code = call.code()
            r.grpc_details = call.details() or ""
        except grpc.RpcError as err:
            r.grpc_code = err.code()
            r.grpc_details = err.details() or ""
    r.ended_s = time.perf_counter()
    return r


async def _raw(address: str, requests: list[Req], metadata: tuple[tuple[str, str], ...] = (),
               pace_s: float = 0.0) -> StreamResult:
    return await asyncio.to_thread(_raw_sync, address, requests, metadata, pace_s)


def _beside_good_stream(srv: RunningServer, bad: Any) -> StreamResult:
    async def both() -> tuple[StreamResult, StreamResult]:
        good_task = asyncio.create_task(
            one_stream(srv.address, 2.0, model=REGRESSION, pace_s=0.25, chunk_s=0.25))
        bad_result = await bad
        return await good_task, bad_result

    good, bad_result = run(both())
    assert good.ok, (good.grpc_code, good.grpc_details, good.status_message)
    assert len(good.time_codes) == 60
    assert good.order[-2:] == ["event", "status"]
    return bad_result


def _assert_error(r: StreamResult, code: grpc.StatusCode, *needles: str) -> None:
    assert r.grpc_code == code, (r.grpc_code, r.grpc_details)
    assert r.status_code == status_pb2.Status.ERROR
    assert r.order[-1] == "status"
    assert "event" not in r.order
    for n in needles:
        assert n in r.status_message, r.status_message
        assert n in r.grpc_details, r.grpc_details


@pytest.mark.parametrize(("header", "needle"), [
    (dict(channels=2), "channel_count 2 (allowed: 1, mono)"),
    (dict(bits=8), "bits_per_sample 8 (allowed: 16)"),
    (dict(rate=8000), "samples_per_second 8000 (allowed: 16000..144000)"),
    (dict(rate=192000), "samples_per_second 192000 (allowed: 16000..144000)"),
    (dict(fmt=1), "audio_format 1 (allowed: AUDIO_FORMAT_PCM=0)"),
])
def test_unsupported_audio_header_is_invalid_argument(server: RunningServer,
                                                      header: dict[str, int],
                                                      needle: str) -> None:
    r = _beside_good_stream(server, _raw(server.address, [_header(**header), _audio(0.5), _END]))
    _assert_error(r, grpc.StatusCode.INVALID_ARGUMENT, needle)


def test_audio_before_header_is_invalid_argument(server: RunningServer) -> None:
    r = _beside_good_stream(server, _raw(server.address, [_audio(0.5), _END]))
    _assert_error(r, grpc.StatusCode.INVALID_ARGUMENT, "expected audio_stream_header as the "
                  "first message, got audio_with_emotion")


def test_second_header_is_invalid_argument(server: RunningServer) -> None:
    r = _beside_good_stream(server, _raw(server.address,
                                         [_header(), _audio(0.5), _header(), _END]))
    _assert_error(r, grpc.StatusCode.INVALID_ARGUMENT, "a second audio_stream_header")


def test_buffer_over_ten_seconds_is_invalid_argument(server: RunningServer) -> None:
    r = _beside_good_stream(server, _raw(server.address, [_header(), _audio(10.5), _END]))
    _assert_error(r, grpc.StatusCode.INVALID_ARGUMENT, "over the 10 s limit per buffer")


def test_clip_over_the_limit_is_invalid_argument(server: RunningServer) -> None:
    # The module's server allows 20 s clips; three 8 s buffers cross that.
    reqs = [_header(), _audio(8.0), _audio(8.0), _audio(8.0), _END]
    r = _beside_good_stream(server, _raw(server.address, reqs))
    _assert_error(r, grpc.StatusCode.INVALID_ARGUMENT, "clip longer than 20 s (max_clip_s)")


@pytest.mark.parametrize(("params", "needle"), [
    ({"lowerFaceSmoothing": 0.5}, "lowerFaceSmoothing"),
    ({"noSuchParameter": 1.0}, "noSuchParameter"),
])
def test_face_parameter_out_of_range_or_unknown_is_invalid_argument(
        server: RunningServer, params: dict[str, float], needle: str) -> None:
    reqs = build_requests(synthetic_speech(0.5), 16000, face_params=params)
    r = _beside_good_stream(server, _raw(server.address, reqs))
    _assert_error(r, grpc.StatusCode.INVALID_ARGUMENT, needle)


def test_unknown_model_is_not_found_listing_the_models(server: RunningServer) -> None:
    reqs = [_header(), _audio(0.5), _END]
    r = _beside_good_stream(server, _raw(server.address, reqs, (("x-a2f-model", "nope"),)))
    _assert_error(r, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'", REGRESSION, DIFFUSION)


def test_unknown_identity_is_not_found_listing_the_identities(server: RunningServer) -> None:
    reqs = [_header(), _audio(0.5), _END]
    md = (("x-a2f-model", DIFFUSION), ("x-a2f-identity", "Nobody"))
    r = _beside_good_stream(server, _raw(server.address, reqs, md))
    _assert_error(r, grpc.StatusCode.NOT_FOUND, "unknown identity 'Nobody'", "Claire")


def test_idle_stream_past_the_timeout_is_deadline_exceeded(server: RunningServer) -> None:
    # The module's server times out after 1.5 s of silence; the client pauses 2.5 s.
    reqs = [_header(), _audio(0.5), _audio(0.5), _END]
    r = _beside_good_stream(server, _raw(server.address, reqs, pace_s=2.5))
    _assert_error(r, grpc.StatusCode.DEADLINE_EXCEEDED, "no message from the client for 1.5 s")


def _wait_for(cond: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_client_cancel_mid_stream_frees_the_stream(server: RunningServer) -> None:
    before = server.sample("a2f_inference_streams_total",
                           {"model": REGRESSION, "result": "cancelled"})

    async def cancel_after_first_frames() -> None:
        got_frames = asyncio.Event()
        pcm = synthetic_speech(6.0)
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)
            task = asyncio.create_task(stream_audio(
                stub, build_requests(pcm, 16000, chunk_s=0.25),
                metadata=(("x-a2f-model", REGRESSION),), pace_s=0.25,
                on_frame=lambda r: got_frames.set()))
            await asyncio.wait_for(got_frames.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    _beside_good_stream(server, cancel_after_first_frames())
    _wait_for(lambda: server.sample("a2f_inference_streams_total",
                                    {"model": REGRESSION, "result": "cancelled"}) == before + 1)
    _wait_for(lambda: server.server.registry.open_streams == 0)
    assert server.sample("a2f_inference_active_streams", {"model": REGRESSION}) == 0


def test_streams_over_the_cap_get_resource_exhausted(standin_root: Any) -> None:
    with run_server(standin_root, max_streams=1) as srv:
        async def two() -> tuple[StreamResult, StreamResult]:
            first = asyncio.create_task(one_stream(srv.address, 2.0, model=REGRESSION,
                                                   pace_s=0.25, chunk_s=0.25))
            deadline = time.monotonic() + 20
            while srv.server.registry.open_streams < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            second = await one_stream(srv.address, 0.5, model=REGRESSION)
            return await first, second

        first, second = run(two())
        assert first.ok
        _assert_error(second, grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "server at capacity: 1 of 1 streams open")
