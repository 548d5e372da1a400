"""Configuration of model-sync: one typed dataclass, read from ``A2F_MODEL_SYNC_*``.

Every CLI flag doubles as an environment variable (``--interval-s`` is
``A2F_MODEL_SYNC_INTERVAL_S``). The seed's ``A2F_MODEL_DATA_PATH`` is the default
destination. Credentials, region and endpoint also follow boto3's own variables
(``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``, IRSA's ``AWS_WEB_IDENTITY_TOKEN_FILE``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from a2f_config import EnvLoader
from a2f_volume.errors import InvalidArgumentError

ENV_PREFIX = "A2F_MODEL_SYNC_"
#: ``A2F_MODEL_SYNC_<FIELD>``; the destination also from the seed's ``A2F_MODEL_DATA_PATH``
#: (the prefixed name wins when both are set).
ENV = EnvLoader(ENV_PREFIX, {"dest": (ENV_PREFIX + "DEST", "A2F_MODEL_DATA_PATH")})


@dataclass(frozen=True)
class SyncConfig:
    """Settings of one model-sync process.

    - ``source``: ``s3://BUCKET/PREFIX`` or ``file:///DIR``; each top-level folder is a model.
    - ``dest``: the models root on the volume (default ``A2F_MODEL_DATA_PATH`` or
      ``/data/models``).
    - ``once``: one pass, exit 0 only when the volume matches the source (default False).
    - ``interval_s``: polling interval of the daemon (default 60), ``jitter_fraction``: random
      extra of up to this fraction of it (default 0.1).
    - ``endpoint_url``: S3-compatible endpoint (MinIO, ...), default AWS.
    - ``delete``: mirror removal of a model from the source (default False: keep it).
    - ``adopt``: move a plain model directory (the seed's layout) into the versions store once
      the source can be listed, keeping the files that match the source (default True; False
      refuses such a folder with error kind ``plain_folder``).
    - ``max_concurrency``: parallel GETs (default 10), ``multipart_chunk_bytes``: objects above
      this are fetched as ranged GETs of this size (default 8 MiB).
    - ``max_bytes_per_s``: bandwidth limit, 0 for none (default 0).
    - ``health_host``/``health_port``: HTTP ``/ready``, ``/healthz``, ``/metrics`` of the
      daemon (default 0.0.0.0:9103; port -1 disables).
    - ``grace_s``: an old version stays at least this long after being superseded (default 600),
      ``keep_versions``: old versions kept at most when no one leases them (default 2).
    - ``engine_cache_keep``: cached engines in ``.a2f/engines`` that no version uses, kept for
      a quick rollback (default 1; those a version uses are always kept).
    - ``once_attempts``: passes tried by ``--once`` before giving up (default 3).
    - ``retry_max_s``: longest back-off between failed passes of the daemon (default 300).
    - ``s3_max_attempts``: attempts per S3 request, with botocore's exponential back-off
      (throttling, 5xx, connection errors) (default 6).
    - ``log_level``: default INFO.
    """

    source: str = ""
    dest: str = "/data/models"
    once: bool = False
    interval_s: float = 60.0
    jitter_fraction: float = 0.1
    endpoint_url: str | None = None
    delete: bool = False
    adopt: bool = True
    max_concurrency: int = 10
    multipart_chunk_bytes: int = 8 << 20
    max_bytes_per_s: int = 0
    health_host: str = "0.0.0.0"
    health_port: int = 9103
    grace_s: float = 600.0
    keep_versions: int = 2
    engine_cache_keep: int = 1
    once_attempts: int = 3
    retry_max_s: float = 300.0
    s3_max_attempts: int = 6
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        scheme = urlparse(self.source).scheme
        if scheme not in ("s3", "file"):
            raise InvalidArgumentError(
                f"source {self.source!r}: expected s3://BUCKET/PREFIX or file:///DIR "
                "(--source or A2F_MODEL_SYNC_SOURCE)")
        if not self.dest:
            raise InvalidArgumentError("dest is empty: expected the models root, e.g. /data/models")
        checks: list[tuple[str, bool, str]] = [
            ("interval_s", self.interval_s > 0, "> 0"),
            ("jitter_fraction", 0 <= self.jitter_fraction <= 1, "between 0 and 1"),
            ("max_concurrency", 1 <= self.max_concurrency <= 64, "between 1 and 64"),
            ("multipart_chunk_bytes", self.multipart_chunk_bytes >= 1 << 16, ">= 65536"),
            ("max_bytes_per_s", self.max_bytes_per_s >= 0, ">= 0 (0 = unlimited)"),
            ("health_port", -1 <= self.health_port <= 65535, "-1 (off), 0 (any) .. 65535"),
            ("grace_s", self.grace_s >= 0, ">= 0"),
            ("keep_versions", self.keep_versions >= 0, ">= 0"),
            ("engine_cache_keep", self.engine_cache_keep >= 0, ">= 0"),
            ("once_attempts", self.once_attempts >= 1, ">= 1"),
            ("retry_max_s", self.retry_max_s > 0, "> 0"),
            ("s3_max_attempts", 1 <= self.s3_max_attempts <= 20, "between 1 and 20"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidArgumentError(
                    f"{name}={getattr(self, name)!r} is out of range: allowed {allowed}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SyncConfig:
        """Build from ``A2F_MODEL_SYNC_*`` variables; ``overrides`` (CLI flags) win."""
        return ENV.load(cls, env, overrides)
