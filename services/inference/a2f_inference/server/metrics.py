"""Every Prometheus metric of the inference server, namespaced ``a2f_inference_``."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STREAM_RESULTS = ("success", "error", "cancelled")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
                    1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class InferenceMetrics:
    """The server's metrics, registered in ``registry`` (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        ns = "a2f_inference"
        self.active_streams = Gauge(
            "active_streams", "Streams open right now.", ["model"], namespace=ns, registry=reg)
        self.streams = Counter(
            "streams", "Streams ended, by result.", ["model", "result"], namespace=ns,
            registry=reg)
        self.frames_sent = Counter(
            "frames_sent", "Animation frames sent.", ["model"], namespace=ns, registry=reg)
        self.audio_received = Counter(
            "audio_received_seconds", "Seconds of audio received.", ["model"], namespace=ns,
            registry=reg)
        self.batch_size = Histogram(
            "batch_size", "Windows per inference batch.", ["model"], namespace=ns,
            buckets=_BATCH_BUCKETS, registry=reg)
        self.queue_wait = Histogram(
            "queue_wait_seconds", "Time a ready window waited for its batch.", ["model"],
            namespace=ns, buckets=_LATENCY_BUCKETS, registry=reg)
        self.inference_time = Histogram(
            "inference_seconds", "Engine time per batch.", ["model"], namespace=ns,
            buckets=_LATENCY_BUCKETS, registry=reg)
        self.frame_latency = Histogram(
            "frame_latency_seconds",
            "From the arrival of the audio a frame needs to the frame leaving the server.",
            ["model"], namespace=ns, buckets=_LATENCY_BUCKETS, registry=reg)
        self.errors = Counter(
            "errors", "Streams or calls ended with an error, by gRPC code.", ["code"],
            namespace=ns, registry=reg)
        self.model_info = Gauge(
            "model_info", "Models being served (1 per loaded version).",
            ["model", "version", "kind", "backend", "fingerprint"], namespace=ns, registry=reg)
        for code in grpc.StatusCode:
            if code is not grpc.StatusCode.OK:
                self.errors.labels(code.name)

    def init_model(self, model: str) -> None:
        """Pre-create a model's label values so that dashboards see zeros, not gaps."""
        self.active_streams.labels(model)
        for r in STREAM_RESULTS:
            self.streams.labels(model, r)
        self.frames_sent.labels(model)
        self.audio_received.labels(model)
        self.batch_size.labels(model)
        self.queue_wait.labels(model)
        self.inference_time.labels(model)
        self.frame_latency.labels(model)
