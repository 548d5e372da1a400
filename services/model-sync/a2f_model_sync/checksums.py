"""Content checks of downloaded files: MD5 against the ETag and full-object S3 checksums.

MD5 and checksums are computed while bytes stream in (:class:`Digests`), so verification
needs no second read; :func:`verify_file` reads the file again only for algorithms that were
not streamed. CRC32C and CRC64NVME need ``awscrt``; without it they are not verified.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import zlib
from pathlib import Path
from typing import Any

from a2f_model_sync.source import READ_CHUNK_BYTES, SourceError

logger = logging.getLogger(__name__)


def _crc_b64(value: int, nbytes: int) -> str:
    return base64.b64encode(value.to_bytes(nbytes, "big")).decode()


class _Checksummer:
    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._crc = 0
        self._h: Any = None
        self._crt: Any = None
        if algorithm == "SHA256":
            self._h = hashlib.sha256()
        elif algorithm == "SHA1":
            self._h = hashlib.sha1()
        elif algorithm in ("CRC32C", "CRC64NVME"):
            from awscrt import checksums  # optional; ImportError means "cannot verify"

            self._crt = checksums.crc32c if algorithm == "CRC32C" else checksums.crc64nvme
        elif algorithm != "CRC32":
            raise ImportError(algorithm)

    def update(self, data: bytes) -> None:
        if self._h is not None:
            self._h.update(data)
        elif self._crt is not None:
            self._crc = self._crt(data, self._crc)
        else:
            self._crc = zlib.crc32(data, self._crc)

    def b64(self) -> str:
        if self._h is not None:
            return base64.b64encode(self._h.digest()).decode()
        return _crc_b64(self._crc, 8 if self.algorithm == "CRC64NVME" else 4)


CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")


class Digests:
    """MD5 and S3 checksums computed while bytes stream in (so verification needs no re-read)."""

    def __init__(self, algorithms: tuple[str, ...]) -> None:
        self.md5 = hashlib.md5()
        self.sums: dict[str, _Checksummer] = {}
        for algo in dict.fromkeys(algorithms):
            with contextlib.suppress(ImportError):
                self.sums[algo] = _Checksummer(algo)

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        for h in self.sums.values():
            h.update(data)


def verify_file(path: Path, expected: dict[str, str], etag: str, md5_is_etag: bool,
                digests: Digests | None = None) -> None:
    """Check a downloaded file against its ETag (when it is an MD5) and full-object checksums.

    ``digests`` computed while downloading are used where they cover an algorithm; the file
    is read again only for the rest. Raises :class:`SourceError` (kind ``checksum``) on a
    mismatch.
    """
    got: dict[str, str] = {}
    want: dict[str, str] = {}
    hashers: list[tuple[str, Any]] = []
    plain = etag.strip('"')
    if md5_is_etag and len(plain) == 32 and "-" not in plain:
        want["MD5"] = plain
        if digests is not None:
            got["MD5"] = digests.md5.hexdigest()
        else:
            hashers.append(("MD5", hashlib.md5()))
    for algo, value in expected.items():
        if "-" in value:
            logger.debug("%s: composite %s checksum not verified (ETag and size are)", path, algo)
            continue
        if digests is not None and algo in digests.sums:
            got[algo], want[algo] = digests.sums[algo].b64(), value
            continue
        try:
            hashers.append((algo, _Checksummer(algo)))
            want[algo] = value
        except ImportError:
            logger.debug("%s: %s checksum not verified (install awscrt)", path, algo)
    if hashers:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK_BYTES):
                for _, h in hashers:
                    h.update(chunk)
        for algo, h in hashers:
            got[algo] = h.hexdigest() if algo == "MD5" else h.b64()
    for algo, value in want.items():
        if got[algo] != value:
            raise SourceError(
                f"{path.name}: downloaded bytes fail the {algo} check (got {got[algo]}, the "
                f"source says {value}); the download is discarded",
                "checksum",
            )

