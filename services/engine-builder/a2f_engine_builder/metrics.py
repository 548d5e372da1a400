"""All Prometheus metrics of the engine-builder (``a2f_engine_builder_*``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

RESULTS = ("built", "reused", "up_to_date", "failed", "skipped")


class BuilderMetrics:
    """Metrics with a ``registry=`` parameter (tests pass a fresh CollectorRegistry)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        ns = "a2f_engine_builder"
        self.registry = registry
        self.builds = Counter(
            f"{ns}_builds", "Engine build attempts by model and result "
            "(built, reused from the engine cache, up_to_date, failed, skipped).",
            ["model", "result"], registry=registry)
        self.build_seconds = Histogram(
            f"{ns}_build_seconds", "Time to build and verify one engine.", ["model", "backend"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 2400), registry=registry)
        self.verification_error = Gauge(
            f"{ns}_verification_max_abs_error", "Max abs difference between the last verified "
            "engine and ONNX Runtime on the ONNX.", ["model"], registry=registry)
        self.last_success = Gauge(
            f"{ns}_last_success_timestamp_seconds", "Unix time of the last successful build or "
            "reuse.", ["model"], registry=registry)
        self.engine_info = Gauge(
            f"{ns}_engine_info", "The engine currently published (value 1).",
            ["model", "backend", "fingerprint", "onnx_sha256"], registry=registry)
        self.consecutive_failures = Gauge(
            f"{ns}_consecutive_failures", "Failed builds in a row (drives the backoff).",
            ["model"], registry=registry)
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}

    def init_model(self, model: str) -> None:
        """Pre-initialise the label values of a newly seen model."""
        for result in RESULTS:
            self.builds.labels(model, result)
        self.consecutive_failures.labels(model)

    def set_engine(self, model: str, backend: str, fingerprint: str, onnx_sha: str) -> None:
        labels = (model, backend, fingerprint, onnx_sha[:16])
        old = self._info_labels.get(model)
        if old is not None and old != labels:
            self.engine_info.remove(*old)
        self.engine_info.labels(*labels).set(1)
        self._info_labels[model] = labels
