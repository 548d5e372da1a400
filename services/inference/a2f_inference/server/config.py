"""Configuration of the inference server: one typed dataclass, read from flags or env vars.

Every field has an environment variable (``A2F_INFERENCE_<FIELD>``) and a CLI flag
(``--<field-with-dashes>``); a flag wins over the variable. The seed's variables keep their
meaning: ``A2F_MODEL_DATA_PATH`` is the models root and ``A2F_MODEL_PATH`` names the default
model (its ``model.json``, or the folder).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from a2f_config import EnvLoader
from a2f_engine.noise import NoisePolicy, parse_noise_policies, policy_for
from a2f_inference.server.limits import check_limits
from a2f_inference.server.modes import EnginePolicy, PostprocessMode
from a2f_inference.server.tls import TlsFiles
from a2f_volume.errors import InvalidArgumentError

ENV_PREFIX = "A2F_INFERENCE_"
HotReloadMode = Literal["inotify", "poll", "off"]
ENGINE_POLICIES: tuple[EnginePolicy, ...] = get_args(EnginePolicy)
POSTPROCESS_MODES: tuple[PostprocessMode, ...] = get_args(PostprocessMode)
HOT_RELOAD_MODES: tuple[HotReloadMode, ...] = get_args(HotReloadMode)

#: Where each field is read from: ``A2F_INFERENCE_<FIELD>``, except the seed's two names.
ENV = EnvLoader(ENV_PREFIX, {"models_root": ("A2F_MODEL_DATA_PATH",),
                             "model_path": ("A2F_MODEL_PATH",)})


def admin_port(address: str) -> int | None:
    """The port of a ``HOST:PORT`` address, or None when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    return int(port)


@dataclass(frozen=True)
class ServerConfig:
    """Settings of ``a2f-inference``.

    Attributes:
        models_root: directory holding one folder per model (default ``/data/models``).
        model_path: the default model's ``model.json`` or folder; its folder name is the
            default model (default ``<models_root>/multi-diffusion/model.json``).
        host: address to listen on (default ``0.0.0.0``).
        port: gRPC port (default 50051, as the seed).
        metrics_port: Prometheus port (default 9400; 0 picks a free one, -1 disables).
        max_streams: cap on concurrent streams; more get RESOURCE_EXHAUSTED (default 64).
        max_clip_s: longest clip a stream may send, in seconds (default 300).
        max_buffer_s: longest single audio buffer, in seconds (default 10).
        idle_timeout_s: a stream that sends nothing for this long is ended (default 30).
        output_fps: animation frames per second sent (default 30).
        grace_s: on SIGTERM, how long open streams get to finish (default 30).
        max_batch: cap on the cross-stream batch; 0 takes the model's ``trt_info.json``
            default (default 0).
        max_wait_s: how long the scheduler waits to fill a batch (default 0.004).
        engine_policy: ``onnx-fallback`` loads ``network.onnx`` with ONNX Runtime when no valid
            built engine exists; ``require-built`` refuses such a model (default onnx-fallback).
        inference_workers: batches each model runs side by side, each on its own thread
            (ONNX Runtime: one intra-op thread pool per worker; TensorRT: one execution
            context and CUDA stream per worker); 0 = automatic: ONNX Runtime one per core up
            to 4, TensorRT 2 (default 0).
        ort_threads: ONNX Runtime intra-op threads per worker, 0 = the cores shared out among
            the workers (default 0).
        postprocess: where post-processing runs: ``overlap`` (its own thread, overlapping the
            next batch's inference) or ``inline`` (on the inference thread, between batches)
            (default overlap; see docs/server.md for the measurements).
        hot_reload: how model changes on the volume are noticed: ``inotify`` (event wake-ups
            plus the periodic rescan), ``poll`` (the rescan only: NFS and other network
            filesystems), ``off`` (models load once at start) (default inotify).
        reload_poll_s: period of the full rescan of the models root (default 5).
        reload_debounce_s: quiet time after a change before the rescan (default 0.5).
        log_level: root log level name (default INFO).
        max_keyframes_per_message: emotion keyframes one ``audio_with_emotion`` may carry;
            more is INVALID_ARGUMENT, checked before any keyframe is read (default 300: one
            per output frame of a 10 s buffer).
        max_keyframes_per_stream: emotion keyframes a whole stream may send (default 9000:
            one per output frame of a 300 s clip).
        max_stream_s: a stream open longer than this (wall time, header to last frame) is
            ended with DEADLINE_EXCEEDED (default 360: a 300 s clip at real time plus slack).
        min_feed_rate: audio seconds a client must send per wall second once its audio
            started; 0 turns the check off (default 0.967 = 29/30, NIM's 29 fps at 30 fps).
        slow_feed_s: a client continuously behind ``min_feed_rate`` for longer than this is
            ended with DEADLINE_EXCEEDED (default 7, as NIM).
        client_read_timeout_s: a stream whose client takes no response for this long while
            frames wait is ended and its slot freed (default 10).
        keepalive_time_s: the server pings a connection after this long without activity
            (default 60).
        keepalive_timeout_s: a connection whose ping is not answered within this is closed
            (default 20).
        max_connection_idle_s: a connection with no open call for this long is closed with
            GOAWAY (default 300).
        max_connection_age_s: a connection older than this gets GOAWAY, so that long-lived
            client channels reconnect and spread over the pods (default 300).
        max_connection_age_grace_s: after that GOAWAY, how long the connection's open calls
            get before it is closed (default 360 = ``max_stream_s``: no stream is cut).
        handshake_timeout_s: a TCP connection that has not completed the HTTP/2 (or TLS)
            handshake within this is closed (default 10).
        tls_cert_file: PEM certificate (chain) of the gRPC port; with ``tls_key_file`` the
            port speaks TLS only (default unset: plaintext). Re-read when it changes on disk.
        tls_key_file: PEM private key (unencrypted) of ``tls_cert_file`` (default unset).
        tls_client_ca_file: PEM CA bundle; when set, every client must present a certificate
            signed by it (mutual TLS) (default unset: no client certificates asked for).
        admin_address: ``HOST:PORT`` of a separate plaintext listener that alone serves
            ``ModelAdmin``, ``GetConfigs`` and reflection (plus health, for probes when the
            gRPC port is TLS); empty keeps them on the gRPC port, as before (default empty;
            ``127.0.0.1:50052`` keeps them inside the pod).
        diffusion_noise: diffusion noise policy per model: a default, then
            ``model=policy`` overrides, e.g. ``fresh,mark-v3=constant``; policies
            ``constant`` (one tensor per model version, NIM 2.0's ``constant_noise``) and
            ``fresh`` (new noise every window); see docs/serving-graph.md (default constant).
        diffusion_noise_seed: seed of the constant noise tensor and of the fresh policy's
            noise pool, drawn once per model version (default 0).
        a2e_model: the Audio2Emotion folder (its name under the models root) whose output
            drives every stream's emotion; empty = the only A2E folder there, if exactly one
            (default empty; see docs/emotion.md).
        a2e_inference_interval: output frames between two A2E runs of a stream (NIM's
            ``a2e.inference_interval``, default 10).
    """

    models_root: Path = Path("/data/models")
    model_path: Path | None = None
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9400
    max_streams: int = 64
    max_clip_s: float = 300.0
    max_buffer_s: float = 10.0
    idle_timeout_s: float = 30.0
    output_fps: float = 30.0
    grace_s: float = 30.0
    max_batch: int = 0
    max_wait_s: float = 0.004
    engine_policy: EnginePolicy = "onnx-fallback"
    inference_workers: int = 0
    ort_threads: int = 0
    postprocess: PostprocessMode = "overlap"
    hot_reload: HotReloadMode = "inotify"
    reload_poll_s: float = 5.0
    reload_debounce_s: float = 0.5
    log_level: str = "INFO"
    max_keyframes_per_message: int = 300
    max_keyframes_per_stream: int = 9000
    max_stream_s: float = 360.0
    min_feed_rate: float = 0.967
    slow_feed_s: float = 7.0
    client_read_timeout_s: float = 10.0
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 360.0
    handshake_timeout_s: float = 10.0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    admin_address: str = ""
    diffusion_noise: str = "constant"
    diffusion_noise_seed: int = 0
    a2e_model: str = ""
    a2e_inference_interval: int = 10

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise InvalidArgumentError(f"invalid server setting: {what}")

        need(0 <= self.port <= 65535, f"port {self.port}, expected 0..65535")
        need(-1 <= self.metrics_port <= 65535,
             f"metrics_port {self.metrics_port}, expected -1 (off), 0 (any) or a port")
        need(self.max_streams >= 1, f"max_streams {self.max_streams}, expected >= 1")
        need(self.max_clip_s > 0, f"max_clip_s {self.max_clip_s}, expected > 0")
        need(self.max_buffer_s > 0, f"max_buffer_s {self.max_buffer_s}, expected > 0")
        need(self.idle_timeout_s > 0, f"idle_timeout_s {self.idle_timeout_s}, expected > 0")
        need(1 <= self.output_fps <= 240, f"output_fps {self.output_fps}, expected 1..240")
        need(self.grace_s >= 0, f"grace_s {self.grace_s}, expected >= 0")
        need(self.max_batch >= 0, f"max_batch {self.max_batch}, expected >= 0 (0 = model's)")
        need(0 <= self.max_wait_s <= 1, f"max_wait_s {self.max_wait_s}, expected 0..1")
        need(self.engine_policy in ENGINE_POLICIES,
             f"engine_policy {self.engine_policy!r}, expected one of {ENGINE_POLICIES}")
        need(0 <= self.inference_workers <= 64,
             f"inference_workers {self.inference_workers}, expected 0 (automatic) or 1..64")
        need(self.ort_threads >= 0, f"ort_threads {self.ort_threads}, expected >= 0")
        need(self.postprocess in POSTPROCESS_MODES,
             f"postprocess {self.postprocess!r}, expected one of {POSTPROCESS_MODES}")
        need(self.hot_reload in HOT_RELOAD_MODES,
             f"hot_reload {self.hot_reload!r}, expected one of {HOT_RELOAD_MODES}")
        need(0.05 <= self.reload_poll_s <= 3600,
             f"reload_poll_s {self.reload_poll_s}, expected 0.05..3600")
        need(0 <= self.reload_debounce_s <= 60,
             f"reload_debounce_s {self.reload_debounce_s}, expected 0..60")
        check_limits(self, need)
        TlsFiles.from_settings(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)
        need(self.admin_address == "" or admin_port(self.admin_address) is not None,
             f"admin_address {self.admin_address!r}, expected HOST:PORT (port 0..65535) or "
             "empty (admin services on the gRPC port)")
        parse_noise_policies(self.diffusion_noise)  # raises naming the bad item
        need(0 <= self.diffusion_noise_seed < 2**63,
             f"diffusion_noise_seed {self.diffusion_noise_seed}, expected 0..2^63-1")
        need(1 <= self.a2e_inference_interval <= 1000,
             f"a2e_inference_interval {self.a2e_inference_interval}, expected 1..1000 frames")
        need(self.a2e_model == "" or "/" not in self.a2e_model,
             f"a2e_model {self.a2e_model!r}, expected a folder name under models_root")

    def noise_policy(self, model: str) -> NoisePolicy:
        """The diffusion noise policy of ``model`` (``diffusion_noise``)."""
        default, overrides = parse_noise_policies(self.diffusion_noise)
        return policy_for(model, default, overrides)

    @property
    def default_model(self) -> str:
        """Name of the default model (the folder of ``model_path``)."""
        if self.model_path is None:
            return "multi-diffusion"
        p = Path(self.model_path)
        return p.parent.name if p.name.endswith(".json") else p.name

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return ENV.env_name(field_name)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Build from environment variables, then apply ``overrides`` (already typed)."""
        return ENV.load(cls, environ, overrides)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field; unset flags fall back to the env var, then the default."""
        ENV.add_flags(parser, cls)

    @classmethod
    def from_args(cls, args: argparse.Namespace,
                  environ: Mapping[str, str] | None = None) -> ServerConfig:
        given = {f.name: getattr(args, f.name, None) for f in fields(cls)}
        return cls.from_env(environ, **given)
