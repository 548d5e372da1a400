"""A client written only against NVIDIA's published stubs, like their sample app.

Run as ``python nvidia_stub_client.py HOST:PORT WAV [MODEL] [--no-pace] [--tls-ca-file PEM
[--tls-cert-file PEM --tls-key-file PEM]]``; prints one JSON object with what came back (kept
out of the server's process and packages on purpose), including every frame's
``EmotionAggregate`` unpacked with the published message class, as NVIDIA's sample app does.
``--no-pace`` sends the chunks without waiting a second between them. With ``--tls-ca-file``
the channel is TLS, built with grpc's own ``ssl_channel_credentials`` as NVIDIA's sample
client does.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import wave

import grpc
from nvidia_ace import audio_pb2
from nvidia_audio2face_3d import audio2face_pb2_grpc, messages_pb2


def _tls_options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional arguments and ``--tls-*-file PATH`` pairs."""
    positional, options = [], {}
    it = iter(argv)
    for arg in it:
        if arg.startswith("--tls-"):
            options[arg] = next(it)
        else:
            positional.append(arg)
    return positional, options


def _channel(target: str, tls: dict[str, str]) -> grpc.Channel:
    if "--tls-ca-file" not in tls:
        return grpc.insecure_channel(target)

    def read(flag: str) -> bytes | None:
        if flag not in tls:
            return None
        with open(tls[flag], "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(root_certificates=read("--tls-ca-file"),
                                         private_key=read("--tls-key-file"),
                                         certificate_chain=read("--tls-cert-file"))
    return grpc.secure_channel(target, creds)


def main() -> None:
    pace = "--no-pace" not in sys.argv
    args, tls = _tls_options([a for a in sys.argv[1:] if a != "--no-pace"])
    target, wav_path = args[0], args[1]
    model = args[2] if len(args) > 2 else None
    with wave.open(wav_path, "rb") as w:
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    sent_all = threading.Event()
    timing: dict[str, float] = {}

    def requests():
        header = messages_pb2.AudioWithEmotionStreamHeader(
            audio_header=audio_pb2.AudioHeader(
                audio_format=audio_pb2.AudioHeader.AUDIO_FORMAT_PCM, channel_count=1,
                samples_per_second=rate, bits_per_sample=16))
        header.face_params.float_params["upperFaceStrength"] = 1.2
        header.blendshape_params.bs_weight_multipliers["JawOpen"] = 1.0
        header.emotion_post_processing_params.emotion_strength = 0.6
        yield messages_pb2.AudioWithEmotionStream(audio_stream_header=header)
        step = rate * 2  # 1-second chunks, like the sample client
        for i, start in enumerate(range(0, len(pcm), step)):
            chunk = messages_pb2.AudioWithEmotion(audio_buffer=pcm[start:start + step])
            if i == 0:
                for t, name in ((0.0, "joy"), (1.0, "fear")):
                    e = messages_pb2.EmotionWithTimeCode(time_code=t)
                    e.emotion[name] = 1.0
                    chunk.emotions.append(e)
            yield messages_pb2.AudioWithEmotionStream(audio_with_emotion=chunk)
            if pace:
                time.sleep(1.0)  # real-time pacing: frames must arrive before the end
        timing["audio_done"] = time.monotonic()
        sent_all.set()
        yield messages_pb2.AudioWithEmotionStream(
            end_of_audio=messages_pb2.AudioWithEmotionStream.EndOfAudio())

    out: dict = {"order": [], "time_codes": [], "n_values": [], "audio_bytes": [],
                 "audio_time_codes": [], "emotion_aggregates": []}
    md = (("x-a2f-model", model),) if model else ()
    with _channel(target, tls) as channel:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(channel)
        responses = stub.ProcessAudioStream(requests(), metadata=md)
        for msg in responses:
            part = msg.WhichOneof("stream_part")
            out["order"].append(part)
            if part == "animation_data_stream_header":
                h = msg.animation_data_stream_header
                out["blend_shapes"] = list(h.skel_animation_header.blend_shapes)
                out["header_rate"] = h.audio_header.samples_per_second
                out["header_channels"] = h.audio_header.channel_count
                out["header_bits"] = h.audio_header.bits_per_sample
            elif part == "animation_data":
                if "first_frame" not in timing:
                    timing["first_frame"] = time.monotonic()
                    out["first_frame_before_end_of_audio"] = not sent_all.is_set()
                for bw in msg.animation_data.skel_animation.blend_shape_weights:
                    out["time_codes"].append(bw.time_code)
                    out["n_values"].append(len(bw.values))
                out["audio_bytes"].append(len(msg.animation_data.audio.audio_buffer))
                md = msg.animation_data.metadata
                agg = messages_pb2.EmotionAggregate()
                if "emotion_aggregate" in md and md["emotion_aggregate"].Unpack(agg):
                    out["emotion_aggregates"].append({
                        field: [[e.time_code, dict(e.emotion)] for e in getattr(agg, field)]
                        for field in ("input_emotions", "a2e_output", "a2f_smoothed_output")})
                else:
                    out["emotion_aggregates"].append(None)
                out["audio_time_codes"].append(msg.animation_data.audio.time_code)
            elif part == "event":
                out["event_type"] = msg.event.event_type
            elif part == "status":
                out["status_code"] = msg.status.code
                out["status_message"] = msg.status.message
        out["grpc_code"] = responses.code().name
        out["initial_metadata"] = dict(responses.initial_metadata())
    out["audio_seconds"] = len(pcm) / 2 / rate
    print(json.dumps(out))


if __name__ == "__main__":
    main()
