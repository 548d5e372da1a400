"""One ``ProcessAudioStream`` call: the protocol's state machine around a pipeline session.

The servicer hands each call to :class:`AudioStreamCall`, which checks the order and format
of what the client sends, feeds audio and emotion keyframes to the pipeline's
``StreamSession``, and yields the animation frames as soon as the batch scheduler has made
them (the scheduler's worker thread wakes the call through ``loop.call_soon_threadsafe``).
Inference never runs on the event loop. Every way a stream can end releases its session and
its slot in one ``finally``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from a2f_inference.pipeline import StreamSession
from a2f_inference.pipeline.emotion_aggregate import METADATA_KEY, TYPE_URL
from a2f_inference.proto_gen.nvidia_ace import animation_pb2, audio_pb2, status_pb2
from a2f_inference.proto_gen.nvidia_audio2face_3d import messages_pb2
from a2f_inference.protocol import IDENTITY_METADATA, MODEL_METADATA, VERSION_METADATA
from a2f_inference.server import params as stream_params
from a2f_inference.server.a2e_model import LoadedEmotion
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.errors import to_status
from a2f_inference.server.limits import (
    WATCH_PERIOD_S,
    StreamWatch,
    TimeLimitError,
    check_keyframes,
    limit_of,
)
from a2f_inference.server.metrics import InferenceMetrics
from a2f_inference.server.registry import LoadedModel, ModelRegistry
from a2f_volume.errors import InvalidArgumentError

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 16000, 144000
Response: TypeAlias = messages_pb2.A2F3DAnimationDataStream


def _floats(values: Any) -> list[float]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def check_audio_header(h: audio_pb2.AudioHeader) -> int:
    """The sample rate of a valid header; anything else is INVALID_ARGUMENT naming the field."""
    problems = []
    if h.audio_format != audio_pb2.AudioHeader.AUDIO_FORMAT_PCM:
        problems.append(f"audio_format {h.audio_format} (allowed: AUDIO_FORMAT_PCM=0)")
    if h.channel_count != 1:
        problems.append(f"channel_count {h.channel_count} (allowed: 1, mono)")
    if h.bits_per_sample != 16:
        problems.append(f"bits_per_sample {h.bits_per_sample} (allowed: 16)")
    if not MIN_RATE <= h.samples_per_second <= MAX_RATE:
        problems.append(f"samples_per_second {h.samples_per_second} "
                        f"(allowed: {MIN_RATE}..{MAX_RATE})")
    if problems:
        raise InvalidArgumentError("unsupported audio header: " + "; ".join(problems))
    return int(h.samples_per_second)


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


class AudioStreamCall:
    """State of one call; :meth:`run` is the servicer's response iterator."""

    def __init__(self, registry: ModelRegistry, config: ServerConfig,
                 metrics: InferenceMetrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.model: LoadedModel | None = None
        self.session: StreamSession | None = None
        self.a2e: LoadedEmotion | None = None  # the A2E version of this stream, if any
        self.rate = 0
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._reader_error: BaseException | None = None
        self._reader_done = False
        self._carry = b""
        self._samples = 0
        # (cumulative seconds received, arrival time): when each part of the audio arrived.
        self._arrived_s: list[float] = []
        self._arrived_at: list[float] = []
        self._end_at = 0.0
        self._lookahead_s = 0.0
        self._result = "error"
        # limits: only audio and end_of_audio push the idle deadline; the watch checks the rest
        self._idle_deadline = self._loop.time() + config.idle_timeout_s
        self._watch = StreamWatch(config, time.monotonic())
        self._keyframes = 0
        self._limit_error: BaseException | None = None
        self._cut = False

    # -- the response iterator ----------------------------------------------------------------
    async def run(self, requests: AsyncIterator[messages_pb2.AudioWithEmotionStream],
                  context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        reader: asyncio.Task[None] | None = None
        watchdog: asyncio.Task[None] | None = None
        try:
            try:
                self.model = self.registry.acquire(_metadata(context, MODEL_METADATA),
                                                   _metadata(context, IDENTITY_METADATA))
            except Exception:
                # Take the client's header in before ending the call: a client that writes
                # to a call the server has already ended may lose the status (grpc.aio
                # reports INTERNAL then, grpc/grpc#36066). Bounded, so a silent client
                # cannot hold the call.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await anext(requests)
                raise
            self.metrics.active_streams.labels(self.model.name).inc()
            await context.send_initial_metadata(((VERSION_METADATA, self.model.version),))
            first = await self._next(requests)
            if first is None:
                raise InvalidArgumentError("the stream ended before its header: send "
                                           "audio_stream_header first")
            yield self._open(first, _metadata(context, IDENTITY_METADATA))
            reader = asyncio.create_task(self._read(requests))
            watchdog = asyncio.create_task(
                self._watchdog(context, (reader, asyncio.current_task())))
            async for msg in self._frames():
                yield msg
            yield Response(event=messages_pb2.Event(
                event_type=messages_pb2.EventType.END_OF_A2F_AUDIO_PROCESSING))
            yield Response(status=status_pb2.Status(code=status_pb2.Status.SUCCESS,
                                                    message="success"))
            self._result = "success"
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away: grpc cancels the call's task, or closes this generator
            # when it is suspended at a yield. (Or the watchdog cut a stuck call: counted.)
            if self._cut:
                raise
            self._result = "cancelled"
            self.metrics.errors.labels(grpc.StatusCode.CANCELLED.name).inc()
            log.info("stream on %s cancelled by the client",
                     self.model.name if self.model else "?")
            raise
        except Exception as exc:
            code, message = to_status(exc)
            self._count_error(exc, code)
            log.info("stream on %s ended with %s: %s",
                     self.model.name if self.model else "?", code.name, message)
            yield Response(status=status_pb2.Status(code=status_pb2.Status.ERROR,
                                                    message=message))
            await context.abort(code, message)
        finally:
            for task in (reader, watchdog):
                if task is not None and not task.done():
                    task.cancel()
            self._release()

    def _count_error(self, exc: BaseException, code: grpc.StatusCode) -> None:
        self.metrics.errors.labels(code.name).inc()
        limit = limit_of(exc)
        if limit is not None:
            self.metrics.limit_cuts.labels(limit).inc()

    async def _watchdog(self, context: grpc.aio.ServicerContext,
                        tasks: tuple[asyncio.Task[Any] | None, ...]) -> None:
        """Check the stream's time limits every ``WATCH_PERIOD_S`` until one trips.

        A tripped limit normally reaches the client through the response iterator (like any
        error). A client that stopped reading leaves the iterator suspended in a write, so
        then the stream is ended from here: counted, its session and slot released at once,
        the status sent and the call's task cancelled."""
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            error = self._watch.check(time.monotonic())
            if error is None:
                continue
            if self._watch.write_started is None:
                self._limit_error = error
                self._wake.set()
                return
            self._cut = True
            code, message = to_status(error)
            self._count_error(error, code)
            log.info("stream on %s cut with %s: %s",
                     self.model.name if self.model else "?", code.name, message)
            self._release()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await context.abort(code, message)
            for task in tasks:
                if task is not None:
                    task.cancel()
            return

    def _release(self) -> None:
        lm = self.model
        if self.session is not None:
            try:
                self.session.close()
            except Exception:
                log.exception("closing a stream session failed")
            self.session = None
        if self.a2e is not None:
            self.registry.release_a2e(self.a2e)
            self.a2e = None
        if lm is not None:
            self.metrics.active_streams.labels(lm.name).dec()
            self.metrics.streams.labels(lm.name, self._result).inc()
            self.model = None
            self.registry.release(lm)

    # -- requests ------------------------------------------------------------------------------
    async def _next(self, requests: AsyncIterator[messages_pb2.AudioWithEmotionStream]
                    ) -> messages_pb2.AudioWithEmotionStream | None:
        """The next request; the idle deadline moves only with audio and end_of_audio."""
        try:
            # asyncio.timeout_at rather than wait_for: no task per message
            async with asyncio.timeout_at(self._idle_deadline):
                return await anext(requests)
        except StopAsyncIteration:
            return None
        except TimeoutError as err:
            raise TimeLimitError(
                "idle_timeout_s",
                f"no audio from the client for {self.config.idle_timeout_s:g} s "
                "(idle_timeout_s; messages without audio samples do not count); send audio "
                "or end_of_audio") from err

    def _open(self, first: messages_pb2.AudioWithEmotionStream,
              identity: str | None) -> Response:
        part = first.WhichOneof("stream_part")
        if part != "audio_stream_header":
            raise InvalidArgumentError(
                f"expected audio_stream_header as the first message, got {part}: "
                "send the header, then audio_with_emotion messages, then end_of_audio")
        assert self.model is not None
        header = first.audio_stream_header
        self.rate = check_audio_header(header.audio_header)
        self.a2e = self.registry.acquire_a2e()
        session = stream_params.open_session(
            self.model.runtime, header, identity=identity, input_rate=self.rate,
            output_fps=self.config.output_fps, on_ready=self._on_ready,
            emotion_model=self.a2e.runtime if self.a2e is not None else None)
        self.session = session
        self._lookahead_s = max(float(session.lookahead_s),  # A2E: its centred window
                                self.a2e.lookahead_s if self.a2e is not None else 0.0)
        names = list(session.blendshape_names)
        out_rate = int(session.output_rate)
        return Response(animation_data_stream_header=messages_pb2.A2F3DAnimationDataStreamHeader(
            audio_header=audio_pb2.AudioHeader(
                audio_format=audio_pb2.AudioHeader.AUDIO_FORMAT_PCM, channel_count=1,
                samples_per_second=out_rate, bits_per_sample=16),
            skel_animation_header=animation_pb2.SkelAnimationHeader(blend_shapes=names),
            start_time_code_since_epoch=time.time()))

    def _on_ready(self, _session: StreamSession) -> None:
        """Scheduler worker thread: the session has frames (or finished)."""
        self._loop.call_soon_threadsafe(self._wake.set)

    async def _read(self, requests: AsyncIterator[messages_pb2.AudioWithEmotionStream]) -> None:
        try:
            while True:
                msg = await self._next(requests)
                if msg is None:
                    raise InvalidArgumentError("the request stream ended without end_of_audio")
                part = msg.WhichOneof("stream_part")
                if part == "audio_with_emotion":
                    self._push(msg.audio_with_emotion)
                elif part == "end_of_audio":
                    self._end()
                    return
                elif part == "audio_stream_header":
                    raise InvalidArgumentError(
                        "a second audio_stream_header: a stream has exactly one header, first")
                else:
                    raise InvalidArgumentError(
                        "empty message: set one of audio_stream_header, audio_with_emotion, "
                        "end_of_audio")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._reader_error = exc
        finally:
            self._reader_done = True
            self._wake.set()

    def _push(self, chunk: messages_pb2.AudioWithEmotion) -> None:
        assert self.model is not None and self.session is not None
        buf = chunk.audio_buffer
        max_bytes = int(self.config.max_buffer_s * self.rate) * 2
        if len(buf) > max_bytes:
            raise InvalidArgumentError(
                f"audio buffer of {len(buf) / 2 / self.rate:.2f} s ({len(buf)} bytes) is over "
                f"the {self.config.max_buffer_s:g} s limit per buffer (max_buffer_s): split it")
        count = len(chunk.emotions)  # before reading any keyframe
        if count:
            check_keyframes(self.config, count, self._keyframes)
            self._keyframes += count
            self.session.push_emotions(stream_params.emotion_keys(chunk.emotions))
        data = self._carry + buf
        even = len(data) - (len(data) % 2)
        self._carry = data[even:]
        n = even // 2
        if self._samples + n > self.config.max_clip_s * self.rate:
            raise InvalidArgumentError(
                f"clip longer than {self.config.max_clip_s:g} s (max_clip_s): "
                f"{(self._samples + n) / self.rate:.2f} s received")
        if n:
            self.session.push_audio(data[:even])
            self._samples += n
            self._arrived_s.append(self._samples / self.rate)
            self._arrived_at.append(time.perf_counter())
            self.metrics.audio_received.labels(self.model.name).inc(n / self.rate)
            self._idle_deadline = self._loop.time() + self.config.idle_timeout_s
            self._watch.on_audio(time.monotonic(), self._samples / self.rate)
        self._wake.set()

    def _end(self) -> None:
        assert self.session is not None
        if self._samples == 0:
            raise InvalidArgumentError("end_of_audio before any audio: send at least one "
                                       "audio_with_emotion with samples")
        self._end_at = time.perf_counter()
        self._idle_deadline = self._loop.time() + self.config.idle_timeout_s
        self._watch.on_end()
        self.session.end_of_audio()

    # -- responses -----------------------------------------------------------------------------
    def _needed_at(self, time_code: float) -> float:
        """When the last audio sample a frame needs arrived."""
        need = time_code + self._lookahead_s
        i = bisect.bisect_left(self._arrived_s, need - 1e-9)
        if i < len(self._arrived_at):
            return self._arrived_at[i]
        return self._end_at or (self._arrived_at[-1] if self._arrived_at else time.perf_counter())

    async def _frames(self) -> AsyncIterator[Response]:
        assert self.model is not None
        name = self.model.name
        frames_sent = self.metrics.frames_sent.labels(name)
        latency = self.metrics.frame_latency.labels(name)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._reader_error is not None:
                raise self._reader_error
            if self._limit_error is not None:
                raise self._limit_error
            session = self.session
            assert session is not None
            frames = session.take_frames()
            emotions = session.emotions
            sent = 0
            try:
                for f in frames:
                    t = f.time_code_s
                    msg = Response()
                    data = msg.animation_data
                    bw = data.skel_animation.blend_shape_weights.add()
                    bw.time_code = t
                    bw.values.extend(_floats(f.weights))
                    data.audio.time_code = t
                    data.audio.audio_buffer = bytes(f.audio)
                    agg = data.metadata[METADATA_KEY]
                    agg.type_url = TYPE_URL
                    agg.value = emotions.aggregate_bytes(f.index, t)
                    self._watch.write_started = time.monotonic()
                    yield msg
                    self._watch.write_started = None
                    sent += 1
                    latency.observe(time.perf_counter() - self._needed_at(t))
            finally:
                if sent:
                    frames_sent.inc(sent)
            error = session.error
            if error is not None:
                raise error
            if self._reader_done and session.done and not frames:
                return
            if self._reader_done and session.done:
                self._wake.set()  # one more turn: frames made after this take are sent
