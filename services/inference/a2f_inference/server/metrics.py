"""Every Prometheus metric of the inference server, namespaced ``a2f_inference_``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from a2f_inference.pipeline import BatchStats
from a2f_inference.server.limits import LIMITS

STREAM_RESULTS = ("success", "error", "cancelled")
LOAD_RESULTS = ("loaded", "failed")
TLS_RELOAD_RESULTS = ("loaded", "failed")
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
                    1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
_A2E_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.postprocess_time = Histogram(
            "postprocess_seconds", "Post-processing time per batch (all its streams).",
            ["model"], namespace=ns, buckets=_LATENCY_BUCKETS, registry=reg)
        self.postprocess_wait = Histogram(
            "postprocess_wait_seconds",
            "Time a batch waited after its inference for its turn in post-processing "
            "(batches are post-processed in the order they were gathered).",
            ["model"], namespace=ns, buckets=_LATENCY_BUCKETS, registry=reg)
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
        self.model_loads = Counter(
            "model_loads", "Model versions loaded (warmed up, taking new streams) or failed, "
            "by the hot reload.", ["model", "result"], namespace=ns, registry=reg)
        self.model_load_seconds = Histogram(
            "model_load_seconds", "Time to load and warm up a model version.", ["model"],
            namespace=ns, buckets=_LOAD_BUCKETS, registry=reg)
        self.limit_cuts = Counter(
            "limit_cuts", "Streams ended by a server limit (also counted in errors_total "
            "under their gRPC code), by the setting that tripped.", ["limit"], namespace=ns,
            registry=reg)
        self.a2e_batch_size = Histogram(
            "a2e_batch_size", "Audio2Emotion windows per batch (all streams together).",
            ["model"], namespace=ns, buckets=_A2E_BATCH_BUCKETS, registry=reg)
        self.a2e_batch_streams = Histogram(
            "a2e_batch_streams", "Streams whose Audio2Emotion windows shared a batch.",
            ["model"], namespace=ns, buckets=_A2E_BATCH_BUCKETS, registry=reg)
        self.a2e_inference_time = Histogram(
            "a2e_inference_seconds", "Audio2Emotion engine time per batch.", ["model"],
            namespace=ns, buckets=_LATENCY_BUCKETS, registry=reg)
        self.a2e_queue_wait = Histogram(
            "a2e_queue_wait_seconds", "Time a ready Audio2Emotion window waited for its batch.",
            ["model"], namespace=ns, buckets=_LATENCY_BUCKETS, registry=reg)
        for code in grpc.StatusCode:
            if code is not grpc.StatusCode.OK:
                self.errors.labels(code.name)
        for limit in LIMITS:
            self.limit_cuts.labels(limit)
        self.tls_reloads = Counter(
            "tls_reloads", "Certificate files re-read after they changed on disk: loaded (in "
            "use for new connections) or failed (unusable; the previous certificate stays).",
            ["result"], namespace=ns, registry=reg)
        for r in TLS_RELOAD_RESULTS:
            self.tls_reloads.labels(r)

    def tls_reloaded(self, ok: bool) -> None:
        """Count one attempt to load changed certificate files."""
        self.tls_reloads.labels("loaded" if ok else "failed").inc()

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
        self.postprocess_time.labels(model)
        self.postprocess_wait.labels(model)
        self.frame_latency.labels(model)
        for r in LOAD_RESULTS:
            self.model_loads.labels(model, r)
        self.model_load_seconds.labels(model)

    def init_a2e(self, model: str) -> None:
        """Pre-create an Audio2Emotion model's label values."""
        self.a2e_batch_size.labels(model)
        self.a2e_batch_streams.labels(model)
        self.a2e_inference_time.labels(model)
        self.a2e_queue_wait.labels(model)
        for r in LOAD_RESULTS:
            self.model_loads.labels(model, r)
        self.model_load_seconds.labels(model)

    def watch_versions(self, versions: Callable[[], Iterable[tuple[str, str, str, int]]]
                       ) -> None:
        """Export ``versions()``, rows of (model, version, state, open streams), at each
        scrape as ``a2f_inference_model_version_streams`` (state: serving, draining,
        loading)."""
        self.registry.register(_VersionCollector(versions))


class _VersionCollector(Collector):
    """Per model and version: its state and the streams open on it, read at scrape time
    (no stale label sets once a version is released)."""

    def __init__(self, versions: Callable[[], Iterable[tuple[str, str, str, int]]]) -> None:
        self._versions = versions

    def describe(self) -> list[Any]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for model, version, state, streams in self._versions():
            family.add_metric([model, version, state], streams)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "a2f_inference_model_version_streams",
            "Streams open per model version; the state label says whether the version takes "
            "new streams (serving), only finishes open ones (draining) or is being loaded "
            "(loading, always 0).", labels=["model", "version", "state"])


class BatchMetrics:
    """Scheduler observer: batch size, queue wait, inference and post-processing time of one
    model."""

    def __init__(self, metrics: InferenceMetrics, model: str) -> None:
        self._size = metrics.batch_size.labels(model)
        self._wait = metrics.queue_wait.labels(model)
        self._infer = metrics.inference_time.labels(model)
        self._post = metrics.postprocess_time.labels(model)
        self._post_wait = metrics.postprocess_wait.labels(model)

    def on_batch(self, stats: BatchStats) -> None:
        self._size.observe(stats.size)
        for w in stats.queue_wait_s:
            self._wait.observe(w)
        self._infer.observe(stats.inference_s)
        self._post.observe(stats.postprocess_s)
        self._post_wait.observe(stats.postprocess_wait_s)


class A2EBatchMetrics:
    """A2E scheduler observer: batch size, streams per batch, queue wait, inference time."""

    def __init__(self, metrics: InferenceMetrics, model: str) -> None:
        self._size = metrics.a2e_batch_size.labels(model)
        self._streams = metrics.a2e_batch_streams.labels(model)
        self._infer = metrics.a2e_inference_time.labels(model)
        self._wait = metrics.a2e_queue_wait.labels(model)

    def on_batch(self, stats: BatchStats) -> None:
        self._size.observe(stats.size)
        self._streams.observe(stats.streams)
        self._infer.observe(stats.inference_s)
        for w in stats.queue_wait_s:
            self._wait.observe(w)
