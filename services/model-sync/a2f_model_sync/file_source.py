"""``file:///path``: a local directory as the source, for development and tests without S3."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from a2f_model_sync.listing import KeyFilter
from a2f_model_sync.source import (
    MAX_CHANGE_RETRIES,
    READ_CHUNK_BYTES,
    Downloaded,
    Interrupted,
    SourceError,
    SourceObject,
    TransferOptions,
)
from a2f_model_sync.throttle import RateLimiter
from a2f_volume.hashing import HashCache

logger = logging.getLogger(__name__)


class FileSource:
    """``file:///path``: each subdirectory is a model. The "ETag" is the SHA-256 of the bytes
    (cached by file identity, so an unchanged tree is not re-read at each poll)."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "file" or not parsed.path:
            raise SourceError(f"source {url!r} is not file:///PATH", "config")
        self.url = url
        self.keys = KeyFilter()
        self.root = Path(parsed.path)
        self._hashes = HashCache()

    def describe(self) -> str:
        return f"directory={self.root}"

    def list_objects(self) -> list[SourceObject]:
        if not self.root.is_dir():
            raise SourceError(f"source directory {self.root} does not exist", "no_such_bucket")
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                full = Path(dirpath) / name
                if name.startswith("."):
                    continue
                key = full.relative_to(self.root).as_posix()
                where = self.keys.split(key, "", f"{self.root}/")
                if where is None:
                    continue
                try:
                    size = full.stat().st_size
                    etag = f'"sha256:{self._hashes.sha256(full)}"'
                except FileNotFoundError:
                    continue
                out.append(SourceObject(key, where[0], where[1], size, etag))
        if not out:
            raise SourceError(f"no model files under {self.root}", "empty_prefix")
        return out

    def download(self, obj: SourceObject, dest: Path, opts: TransferOptions) -> Downloaded:
        limiter = RateLimiter(opts.max_bytes_per_s)
        src = self.root / obj.key
        for _attempt in range(MAX_CHANGE_RETRIES + 1):
            try:
                digest = hashlib.sha256()
                with open(src, "rb") as fin, open(dest, "wb") as fout:
                    while chunk := fin.read(READ_CHUNK_BYTES):
                        if opts.stop.is_set():
                            raise Interrupted()
                        limiter.take(len(chunk))
                        fout.write(chunk)
                        digest.update(chunk)
                        opts.progress(len(chunk))
                    fout.flush()
                    os.fsync(fout.fileno())
            except FileNotFoundError as err:
                raise SourceError(f"{src} vanished during download", "other") from err
            etag = f'"sha256:{digest.hexdigest()}"'
            if etag == f'"sha256:{self._hashes.sha256(src)}"':
                return Downloaded(etag, dest.stat().st_size, None, {})
            logger.info("%s changed during copy; copying it again", src)
        raise SourceError(f"{src} kept changing during copy", "changed_during_download")

    def close(self) -> None:
        pass

