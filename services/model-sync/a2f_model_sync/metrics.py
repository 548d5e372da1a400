"""Prometheus metrics of model-sync (namespace ``a2f_model_sync_``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from a2f_model_sync.listing import SKIP_REASONS

RUN_RESULTS = ("success", "error", "interrupted")
ERROR_KINDS = (
    "unreachable",
    "access_denied",
    "no_such_bucket",
    "empty_prefix",
    "throttled",
    "s3_error",
    "checksum",
    "changed_during_download",
    "truncated",
    "bad_record",
    "disk_full",
    "plain_folder",
    "config",
    "other",
)


class SyncMetrics:
    """All metrics of the service, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ns = "a2f_model_sync"
        self.runs = Counter(f"{ns}_runs", "Sync passes by result.", ["result"],
                            registry=registry)
        self.objects_downloaded = Counter(f"{ns}_objects_downloaded",
                                          "Objects downloaded and verified.", registry=registry)
        self.bytes_downloaded = Counter(f"{ns}_downloaded_bytes",
                                        "Bytes received from the source.", registry=registry)
        self.download_restarts = Counter(
            f"{ns}_download_restarts", "Downloads restarted because the object changed meanwhile.",
            registry=registry)
        self.requests = Counter(f"{ns}_s3_requests", "S3 HTTP requests by operation.",
                                ["operation"], registry=registry)
        self.run_duration = Histogram(
            f"{ns}_run_duration_seconds", "Duration of a sync pass.",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry)
        self.last_success = Gauge(f"{ns}_last_success_timestamp_seconds",
                                  "Unix time of the last pass that matched the source.",
                                  registry=registry)
        self.ready = Gauge(f"{ns}_ready", "1 once the volume holds a complete version of every "
                           "model to serve (see docs/model-sync.md).", registry=registry)
        self.source_up = Gauge(f"{ns}_source_up", "1 if the last pass could list the source, 0 "
                               "during an outage (S3, STS, IAM, network).", registry=registry)
        self.consecutive_failed_runs = Gauge(
            f"{ns}_consecutive_failed_runs", "Passes in a row that did not match the source "
            "(drives the retry back-off).", registry=registry)
        self.skipped_objects = Counter(
            f"{ns}_skipped_objects", "Source objects never downloaded, by reason (counted "
            "once per key).", ["reason"], registry=registry)
        self.model_version = Gauge(f"{ns}_model_version_info",
                                   "Published version of each model (value 1).",
                                   ["model", "version"], registry=registry)
        self.errors = Counter(f"{ns}_errors", "Errors by kind.", ["kind"], registry=registry)
        for result in RUN_RESULTS:
            self.runs.labels(result=result)
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)
        for reason in SKIP_REASONS:
            self.skipped_objects.labels(reason=reason)
        for op in ("ListObjectsV2", "GetObject", "HeadObject"):
            self.requests.labels(operation=op)
        self._versions: dict[str, str] = {}

    def set_model_versions(self, versions: dict[str, str]) -> None:
        """Replace the model/version label sets with ``versions`` (model -> version id)."""
        for model, version in list(self._versions.items()):
            if versions.get(model) != version:
                self.model_version.remove(model, version)
                del self._versions[model]
        for model, version in versions.items():
            if self._versions.get(model) != version:
                self.model_version.labels(model=model, version=version).set(1)
                self._versions[model] = version
