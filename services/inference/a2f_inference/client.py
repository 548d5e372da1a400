"""``a2f-client``: stream a WAV file through an Audio2Face-3D server, like NVIDIA's sample client.

Reads a 16-bit mono WAV (:func:`a2f_inference.audio.read_wav`: anything else is refused
with the command that converts it), sends the header with the file's own sample rate, then
the audio in 1-second chunks (the first chunk carries every emotion keyframe), then
end-of-audio. A concurrent reader collects the blendshape names, every frame and the returned
audio, and at the end writes ``animation_frames.csv`` (``timeCode``, ``blendShapes.<Name>``),
``out.wav`` and, from each frame's ``metadata["emotion_aggregate"]``, the three emotion CSV
files of NVIDIA's sample app (:mod:`a2f_inference.emotion_csv`) into ``<out>/output_NNNNNN/``
(the next free number).

TLS: ``--tls-ca-file`` (the CA of the server's certificate; ``--tls`` alone trusts the system's
roots), and for a server that requires client certificates ``--tls-cert-file`` and
``--tls-key-file``; without any of them the channel is plaintext.

The streaming core (:func:`stream_audio`) is shared with ``a2f-bench serve`` and ``a2f-demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import grpc

from a2f_inference.audio import WavFormatError, read_wav, write_wav
from a2f_inference.emotion_csv import EMOTION_CSV_FILES, EmotionCsvWriter
from a2f_inference.pipeline.emotion_aggregate import METADATA_KEY
from a2f_inference.proto_gen.nvidia_ace import animation_pb2, audio_pb2, status_pb2
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc, messages_pb2
from a2f_inference.protocol import IDENTITY_METADATA, MODEL_METADATA, VERSION_METADATA
from a2f_inference.tls_client import client_credentials
from a2f_volume.errors import InvalidArgumentError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmotionKey:
    """One emotion keyframe: ``name=value@time``."""

    name: str
    value: float
    time_s: float

    @classmethod
    def parse(cls, text: str) -> EmotionKey:
        try:
            name_value, _, at = text.partition("@")
            name, _, value = name_value.partition("=")
            if not name or not value:
                raise ValueError(text)
            return cls(name.strip(), float(value), float(at) if at else 0.0)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"bad emotion {text!r}: expected name=value@seconds, e.g. joy=0.8@1.5") from err


@dataclass
class StreamResult:
    """What came back from one stream."""

    blend_shapes: list[str] = field(default_factory=list)
    time_codes: list[float] = field(default_factory=list)
    weights: list[list[float]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    audio_time_codes: list[float] = field(default_factory=list)
    audio_sizes: list[int] = field(default_factory=list)
    frame_arrival_s: list[float] = field(default_factory=list)
    header_audio_rate: int = 0
    end_event: bool = False
    status_code: int = -1
    status_message: str = ""
    order: list[str] = field(default_factory=list)
    model_version: str = ""
    grpc_code: grpc.StatusCode | None = None
    grpc_details: str = ""
    started_s: float = 0.0
    ended_s: float = 0.0
    audio_done_s: float = 0.0
    #: Each frame's emotion aggregate (``metadata["emotion_aggregate"]``), for the CSVs.
    emotions: EmotionCsvWriter = field(default_factory=EmotionCsvWriter)
    #: Frames that carried no readable emotion aggregate.
    frames_without_emotion: int = 0

    @property
    def ok(self) -> bool:
        return (self.grpc_code in (None, grpc.StatusCode.OK)
                and self.status_code == status_pb2.Status.SUCCESS)

    @property
    def fps(self) -> float:
        wall = self.ended_s - self.started_s
        return len(self.time_codes) / wall if wall > 0 else 0.0

    def add(self, msg: messages_pb2.A2F3DAnimationDataStream, *, keep_data: bool = True) -> str:
        """Record one response message; returns its part name (``""`` when none is set).
        ``keep_data=False`` keeps only time codes and arrival times of the frames."""
        part = msg.WhichOneof("stream_part") or ""
        self.order.append(part)
        if part == "animation_data_stream_header":
            h = msg.animation_data_stream_header
            self.blend_shapes = list(h.skel_animation_header.blend_shapes)
            self.header_audio_rate = h.audio_header.samples_per_second
        elif part == "animation_data":
            self._add_animation(msg.animation_data, keep_data)
        elif part == "event":
            self.end_event = True
        elif part == "status":
            self.status_code = msg.status.code
            self.status_message = msg.status.message
        return part

    def _add_animation(self, data: animation_pb2.AnimationData, keep_data: bool) -> None:
        now = time.perf_counter()
        for bw in data.skel_animation.blend_shape_weights:
            self.time_codes.append(bw.time_code)
            self.frame_arrival_s.append(now)
            if keep_data:
                self.weights.append(list(bw.values))
        if keep_data and (METADATA_KEY not in data.metadata
                          or not self.emotions.add(data.metadata[METADATA_KEY])):
            self.frames_without_emotion += 1
        if keep_data and data.HasField("audio"):
            self.audio_time_codes.append(data.audio.time_code)
            self.audio_sizes.append(len(data.audio.audio_buffer))
            self.audio.extend(data.audio.audio_buffer)


def build_requests(pcm: bytes, rate: int, *, emotions: Sequence[EmotionKey] = (),
                   face_params: dict[str, float] | None = None,
                   chunk_s: float = 1.0) -> list[messages_pb2.AudioWithEmotionStream]:
    """Header, audio chunks (keyframes on the first) and end-of-audio, in order."""
    header = messages_pb2.AudioWithEmotionStreamHeader(
        audio_header=audio_pb2.AudioHeader(
            audio_format=audio_pb2.AudioHeader.AUDIO_FORMAT_PCM, channel_count=1,
            samples_per_second=rate, bits_per_sample=16))
    for k, v in (face_params or {}).items():
        header.face_params.float_params[k] = v
    reqs = [messages_pb2.AudioWithEmotionStream(audio_stream_header=header)]
    step = max(2, int(rate * chunk_s) * 2)
    keys: list[messages_pb2.EmotionWithTimeCode] = []
    for t in sorted({e.time_s for e in emotions}):
        ewt = messages_pb2.EmotionWithTimeCode(time_code=t)
        for e in emotions:
            if e.time_s == t:
                ewt.emotion[e.name] = e.value
        keys.append(ewt)
    for i, start in enumerate(range(0, max(len(pcm), 1), step)):
        chunk = messages_pb2.AudioWithEmotion(audio_buffer=pcm[start:start + step])
        if i == 0:
            chunk.emotions.extend(keys)
        reqs.append(messages_pb2.AudioWithEmotionStream(audio_with_emotion=chunk))
    reqs.append(messages_pb2.AudioWithEmotionStream(
        end_of_audio=messages_pb2.AudioWithEmotionStream.EndOfAudio()))
    return reqs


def call_metadata(model: str | None, identity: str | None) -> tuple[tuple[str, str], ...]:
    md = []
    if model:
        md.append((MODEL_METADATA, model))
    if identity:
        md.append((IDENTITY_METADATA, identity))
    return tuple(md)


async def stream_audio(
    stub: audio2face_pb2_grpc.A2FControllerServiceStub,
    requests: Sequence[messages_pb2.AudioWithEmotionStream],
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    pace_s: float = 0.0,
    on_frame: Callable[[StreamResult], None] | None = None,
    send_times: list[float] | None = None,
    timeout_s: float | None = None,
    keep_data: bool = True,
) -> StreamResult:
    """Run one stream on an ``grpc.aio`` stub and collect everything it returns.

    ``pace_s`` > 0 sleeps that long between audio messages (real-time pacing); each request's
    send time (``time.perf_counter``) is appended to ``send_times`` when given.
    ``keep_data=False`` keeps only time codes and arrival times (load generators).
    """
    result = StreamResult(started_s=time.perf_counter())
    answered = asyncio.Event()  # the server accepted the header, or ended the call

    async def gen() -> AsyncIterator[messages_pb2.AudioWithEmotionStream]:
        for i, req in enumerate(requests):
            if i == 1:
                # Audio goes out once the server has answered the header. A call the server
                # has already ended (unknown model, bad header) must not be written to: a
                # failed write makes grpc.aio report INTERNAL "Internal error from Core"
                # instead of the server's status (grpc/grpc#36066).
                await answered.wait()
            if call.done():
                return
            if pace_s > 0 and i > 1 and req.HasField("audio_with_emotion"):
                await asyncio.sleep(pace_s)
            if send_times is not None:
                send_times.append(time.perf_counter())
            yield req
        result.audio_done_s = time.perf_counter()

    call = stub.ProcessAudioStream(gen(), metadata=metadata, timeout=timeout_s)
    call.add_done_callback(lambda _call: answered.set())
    try:
        for key, value in await call.initial_metadata() or ():
            if key == VERSION_METADATA:
                result.model_version = str(value)
        async for msg in call:
            part = result.add(msg, keep_data=keep_data)
            if part == "animation_data_stream_header":
                answered.set()  # the header was accepted (an error ends the call instead)
            elif part == "animation_data" and on_frame is not None:
                on_frame(result)
        result.grpc_code = await call.code()
        result.grpc_details = await call.details() or ""
    except grpc.aio.AioRpcError as err:
        result.grpc_code = err.code()
        result.grpc_details = err.details() or ""
    result.ended_s = time.perf_counter()
    return result


#: Client-side load-balancing policies: ``pick_first`` (gRPC's default: one connection) or
#: ``round_robin`` (every address the name resolves to; with ``dns:///<headless service>``
#: the calls of one channel spread over the ready pods).
LbPolicy = Literal["pick_first", "round_robin"]
LB_POLICIES: tuple[LbPolicy, ...] = get_args(LbPolicy)


def channel_options(lb_policy: LbPolicy | None = None) -> list[tuple[str, str]]:
    """Channel arguments of the client; ``lb_policy`` through the channel's service config."""
    if lb_policy is None:
        return []
    return [("grpc.service_config",
             json.dumps({"loadBalancingConfig": [{lb_policy: {}}]}))]


def next_output_dir(out: Path) -> Path:
    """``out/output_000001``, or the next number not taken yet."""
    out.mkdir(parents=True, exist_ok=True)
    n = 1
    while (out / f"output_{n:06d}").exists():
        n += 1
    d = out / f"output_{n:06d}"
    d.mkdir()
    return d


def write_outputs(result: StreamResult, out_dir: Path, audio_rate: int) -> None:
    with open(out_dir / "animation_frames.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timeCode", *(f"blendShapes.{n}" for n in result.blend_shapes)])
        for t, values in zip(result.time_codes, result.weights, strict=True):
            w.writerow([f"{t:.6f}", *(f"{v:.6f}" for v in values)])
    write_wav(out_dir / "out.wav", bytes(result.audio), audio_rate)
    result.emotions.write(out_dir)


async def run_client(wav: Path, server: str, *, model: str | None = None,
                     identity: str | None = None, emotions: Sequence[EmotionKey] = (),
                     face_params: dict[str, float] | None = None, out: Path = Path("."),
                     quiet: bool = False, realtime: bool = False,
                     tls: TlsOptions | None = None, lb_policy: LbPolicy | None = None,
                     ) -> tuple[StreamResult, Path]:
    """Stream one WAV file and write the outputs; returns the result and the output folder.
    ``tls`` None: plaintext. ``lb_policy``: see :func:`channel_options`."""
    pcm, rate = read_wav(wav)
    requests = build_requests(pcm, rate, emotions=emotions, face_params=face_params)
    seconds = len(pcm) / 2 / rate
    last_print = [0.0]

    def progress(r: StreamResult) -> None:
        now = time.perf_counter()
        if not quiet and now - last_print[0] >= 0.5:
            last_print[0] = now
            t = r.time_codes[-1] if r.time_codes else 0.0
            print(f"  {len(r.time_codes)} frames received, up to {t:.2f}s of {seconds:.2f}s",
                  flush=True)

    async with open_channel(server, tls, lb_policy) as channel:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(channel)
        if not quiet:
            print(f"streaming {wav} ({seconds:.2f}s at {rate} Hz) to {server}", flush=True)
        result = await stream_audio(stub, requests, metadata=call_metadata(model, identity),
                                    on_frame=progress, pace_s=1.0 if realtime else 0.0)
    out_dir = next_output_dir(out)
    write_outputs(result, out_dir, result.header_audio_rate or rate)
    if not quiet:
        status = (status_pb2.Status.Code.Name(result.status_code)
                  if result.status_code >= 0 else "none")
        print(f"status: {status} {result.status_message}".rstrip())
        if result.grpc_code not in (None, grpc.StatusCode.OK):
            print(f"gRPC error: {result.grpc_code.name}: {result.grpc_details}")
        print(f"{len(result.time_codes)} frames, {len(result.blend_shapes)} blendshapes, "
              f"achieved {result.fps:.1f} FPS; model version {result.model_version or '?'}")
        print(f"wrote {out_dir / 'animation_frames.csv'}, {out_dir / 'out.wav'} and "
              f"{', '.join(EMOTION_CSV_FILES.values())}")
    return result, out_dir


@dataclass(frozen=True)
class TlsOptions:
    """How ``a2f-client`` secures its channel: the CA of the server's certificate (None: the
    system's roots), a client certificate and key for mutual TLS, and the name the server's
    certificate must carry when it differs from the address dialled."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TlsOptions | None:
        """None (plaintext) unless ``--tls`` or one of the ``--tls-*`` flags is given."""
        given = (args.tls_ca_file, args.tls_cert_file, args.tls_key_file, args.tls_server_name)
        if not args.tls and all(v is None for v in given):
            return None
        return cls(args.tls_ca_file, args.tls_cert_file, args.tls_key_file,
                   args.tls_server_name)


def open_channel(server: str, tls: TlsOptions | None,
                 lb_policy: LbPolicy | None = None) -> grpc.aio.Channel:
    """A plaintext channel, or a TLS one with :func:`client_credentials`; ``lb_policy`` as in
    :func:`channel_options`."""
    options = channel_options(lb_policy)
    if tls is None:
        return grpc.aio.insecure_channel(server, options=options)
    creds = client_credentials(tls.ca_file, tls.cert_file, tls.key_file)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(server, creds, options=options)


def _face_param(text: str) -> tuple[str, float]:
    k, _, v = text.partition("=")
    try:
        return k.strip(), float(v)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad face parameter {text!r}: expected name=value, "
                                         "e.g. upperFaceStrength=1.2") from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="a2f-client", description="Stream a 16-bit mono WAV through an Audio2Face-3D "
        "server and save the animation (animation_frames.csv), audio (out.wav) and emotions "
        "(a2e_emotion_output.csv, a2f_smoothed_emotion_output.csv, a2f_input_emotions.csv).")
    p.add_argument("wav", type=Path, help="16-bit mono PCM WAV file")
    p.add_argument("--server", default="127.0.0.1:50051",
                   help="HOST:PORT, or a gRPC target such as dns:///a2f-grpc-server-lb:50051 "
                   "(default %(default)s)")
    p.add_argument("--lb-policy", choices=LB_POLICIES, default=None,
                   help="client-side load balancing over the addresses the server name "
                   "resolves to; round_robin with a dns:/// target of a headless Service "
                   "spreads streams over pods (default: gRPC's pick_first)")
    p.add_argument("--model", help="model folder name (request metadata x-a2f-model)")
    p.add_argument("--identity", help="identity of a multi-identity model (x-a2f-identity)")
    p.add_argument("--emotion", action="append", type=EmotionKey.parse, default=[],
                   metavar="NAME=VALUE@T", help="emotion keyframe, repeatable (joy=0.8@0)")
    p.add_argument("--face-param", action="append", type=_face_param, default=[],
                   metavar="NAME=VALUE", help="face parameter, repeatable (skinStrength=1.1)")
    p.add_argument("--out", type=Path, default=Path("."),
                   help="output folder; results go to OUT/output_NNNNNN (default: .)")
    p.add_argument("--realtime", action="store_true",
                   help="send each 1-second chunk one second after the previous one")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    tls = p.add_argument_group("TLS", "any of these makes the channel TLS (default plaintext)")
    tls.add_argument("--tls", action="store_true",
                     help="TLS, trusting the system's CA roots (unless --tls-ca-file)")
    tls.add_argument("--tls-ca-file", type=Path, metavar="PEM",
                     help="CA certificate(s) that signed the server's certificate")
    tls.add_argument("--tls-cert-file", type=Path, metavar="PEM",
                     help="client certificate, for a server that requires mutual TLS")
    tls.add_argument("--tls-key-file", type=Path, metavar="PEM",
                     help="private key of --tls-cert-file")
    tls.add_argument("--tls-server-name", metavar="NAME",
                     help="name to verify in the server's certificate (default: the host of "
                     "--server)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result, _ = asyncio.run(run_client(
            args.wav, args.server, model=args.model, identity=args.identity,
            emotions=args.emotion, face_params=dict(args.face_param), out=args.out,
            quiet=args.quiet, realtime=args.realtime, tls=TlsOptions.from_args(args),
            lb_policy=args.lb_policy))
    except (WavFormatError, FileNotFoundError, InvalidArgumentError) as err:
        print(f"a2f-client: {err}", file=sys.stderr)
        return 2
    if not result.ok:
        print(f"a2f-client: stream failed: {result.status_message or result.grpc_details}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
