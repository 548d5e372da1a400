"""Open the source a URL names: ``s3://BUCKET/PREFIX`` or ``file:///DIR``."""

from __future__ import annotations

from urllib.parse import urlparse

from a2f_model_sync.file_source import FileSource
from a2f_model_sync.s3_source import S3Source
from a2f_model_sync.source import Source, SourceError


def open_source(url: str, endpoint_url: str | None = None, max_concurrency: int = 10,
                region: str | None = None, max_attempts: int = 6) -> Source:
    scheme = urlparse(url).scheme
    if scheme == "s3":
        return S3Source(url, endpoint_url, max_concurrency, region, max_attempts=max_attempts)
    if scheme == "file":
        return FileSource(url)
    raise SourceError(f"source {url!r}: unsupported scheme {scheme!r}; expected s3:// or file://",
                      "config")

