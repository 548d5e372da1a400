"""Where models come from: an S3 (or S3-compatible) prefix, or a local directory.

A source lists every object under its prefix in one pass (``ListObjectsV2``, paginated:
key, size and ETag of each object, no per-object requests) and downloads single objects
into a given file. Each top-level folder under the prefix is a model.

Downloads cannot be fooled by an object that changes while it is read: every GET carries
``If-Match: <ETag from the listing>`` (S3 answers 412 once the object was replaced) and the
ETag of every response is compared too (for servers that ignore ``If-Match``). A single GET
returns one object version, so its bytes are the listed object's. Objects larger than the
multipart chunk size are fetched as parallel ranged GETs written in place, each pinned to the
same ETag; a ``HeadObject`` after the last range confirms ETag and size and gives the
checksums. A replaced object is downloaded again from the start with its new ETag
(:class:`ObjectChanged`). Content is then verified: the MD5 of a single-part, non-KMS object
must equal its ETag, and full-object S3 checksums (CRC32, SHA-1, SHA-256; CRC32C and
CRC64NVME when ``awscrt`` is installed) must match the bytes (computed while streaming for
single GETs). Composite checksums of multipart uploads are not recomputed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from a2f_volume.errors import A2FError
from a2f_volume.hashing import HashCache
from a2f_volume.layout import is_model_name, is_temp_name

logger = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20
_MAX_CHANGE_RETRIES = 3


class SourceError(A2FError):
    """The source cannot be listed or read; ``kind`` is the metrics label of the cause."""

    status = "UNAVAILABLE"

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ObjectChanged(Exception):
    """The object was replaced on the source while it was being downloaded."""


class Interrupted(Exception):
    """The download was stopped (SIGTERM)."""


@dataclass(frozen=True)
class SourceObject:
    """One object of the listing."""

    key: str
    model: str
    path: str  # relative to the model folder
    size: int
    etag: str
    checksum_algorithms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Downloaded:
    """What was actually downloaded: the identity to record in the version record."""

    etag: str
    size: int
    version_id: str | None
    checksum: dict[str, str] = field(default_factory=dict)
    restarts: int = 0


class RateLimiter:
    """A shared token bucket: ``take(n)`` sleeps so that the total rate stays at the limit."""

    def __init__(self, bytes_per_s: int) -> None:
        self.rate = bytes_per_s
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
        delay = start - now
        if delay > 0:
            time.sleep(delay)


class StopFlag:
    """Set by SIGTERM (the parent, shared by everything) or by a failed sibling download."""

    def __init__(self, parent: threading.Event | None = None) -> None:
        self._parent = parent
        self._own = threading.Event()

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or (self._parent is not None and self._parent.is_set())


@dataclass
class TransferOptions:
    chunk_bytes: int = 8 << 20
    max_concurrency: int = 10
    max_bytes_per_s: int = 0
    progress: Callable[[int], None] = lambda n: None
    stop: StopFlag = field(default_factory=StopFlag)


class Source(Protocol):
    url: str

    def describe(self) -> str: ...

    def list_objects(self) -> list[SourceObject]: ...

    def download(self, obj: SourceObject, dest: Path, opts: TransferOptions) -> Downloaded: ...

    def close(self) -> None: ...


def split_key(key: str, prefix: str) -> tuple[str, str] | None:
    """(model, relative path) of a key under ``prefix``; None for keys that are not model files."""
    rest = key[len(prefix):]
    if not rest or rest.endswith("/") or "/" not in rest:
        return None  # folder marker, or an object directly under the prefix
    model, rel = rest.split("/", 1)
    parts = rel.split("/")
    if not is_model_name(model) or any(p in ("", ".", "..") for p in parts):
        return None
    if is_temp_name(parts[-1]):
        return None
    return model, rel


def group_by_model(objects: list[SourceObject]) -> dict[str, dict[str, SourceObject]]:
    out: dict[str, dict[str, SourceObject]] = {}
    for o in objects:
        out.setdefault(o.model, {})[o.path] = o
    return out


# --------------------------------------------------------------------------------------------
# Checksums


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
            while chunk := f.read(_READ_CHUNK):
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


# --------------------------------------------------------------------------------------------
# S3


def full_object_checksums(resp: dict[str, Any], etag: str) -> dict[str, str]:
    """The checksums of a GET/HEAD response that cover the whole object's bytes.

    A ``COMPOSITE`` checksum (a checksum of part checksums, S3's default for multipart uploads)
    cannot be recomputed from the bytes alone; servers that omit ``ChecksumType`` are taken
    to mean composite for multipart objects (ETag ``"...-N"``), as S3 did before the field.
    """
    ctype = resp.get("ChecksumType")
    if ctype == "COMPOSITE" or (ctype is None and "-" in etag.strip('"')):
        return {}
    return {a: str(resp[f"Checksum{a}"]) for a in CHECKSUM_ALGORITHMS
            if resp.get(f"Checksum{a}") and "-" not in str(resp[f"Checksum{a}"])}


def _all_checksums(resp: dict[str, Any]) -> dict[str, str]:
    return {a: str(resp[f"Checksum{a}"]) for a in CHECKSUM_ALGORITHMS if resp.get(f"Checksum{a}")}


def _client_error_code(err: Exception) -> tuple[str, int]:
    resp = getattr(err, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class S3Source:
    """``s3://bucket/prefix`` through boto3 (default credential chain, optional endpoint)."""

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        max_concurrency: int = 10,
        region: str | None = None,
        client: Any = None,
        max_attempts: int = 6,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise SourceError(f"source {url!r} is not s3://BUCKET/PREFIX", "config")
        self.url = url
        self.bucket = parsed.netloc
        prefix = parsed.path.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint_url = endpoint_url
        self.requests: dict[str, int] = {}
        self._req_lock = threading.Lock()
        self.on_request: Callable[[str], None] = lambda op: None
        if client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session(region_name=region)
            creds = session.get_credentials()
            self.credential_source = creds.method if creds is not None else "none found"
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                config=Config(
                    retries={"mode": "standard", "max_attempts": max_attempts},
                    max_pool_connections=2 * max_concurrency + 4,
                    connect_timeout=10,
                    read_timeout=60,
                    # validated only where asked for (ChecksumMode on single GETs); ranged
                    # downloads are verified as a whole after assembly
                    response_checksum_validation="when_required",
                ),
            )
        else:
            self.credential_source = "given client"
        self.client = client
        self.client.meta.events.register("request-created.s3", self._count_request)

    def _count_request(self, event_name: str = "", **kwargs: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        with self._req_lock:
            self.requests[op] = self.requests.get(op, 0) + 1
        self.on_request(op)

    def describe(self) -> str:
        endpoint = self.endpoint_url or self.client.meta.endpoint_url
        return (
            f"bucket={self.bucket} prefix={self.prefix or '(root)'} endpoint={endpoint} "
            f"credentials={self.credential_source}"
        )

    def _fail(self, what: str, err: Exception) -> SourceError:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(err, NoCredentialsError):
            return SourceError(f"{what}: no AWS credentials found ({self.describe()})",
                               "access_denied")
        if isinstance(err, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError
                      | ReadTimeoutError):
            return SourceError(f"{what}: S3 unreachable: {err} ({self.describe()})", "unreachable")
        if isinstance(err, ClientError):
            code, status = _client_error_code(err)
            if code == "NoSuchBucket":
                return SourceError(f"{what}: no such bucket {self.bucket!r} ({self.describe()})",
                                   "no_such_bucket")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                        "AllAccessDisabled") or status == 403:
                return SourceError(f"{what}: access denied ({code or status}) "
                                   f"({self.describe()})", "access_denied")
            if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                        "ServiceUnavailable") or status in (429, 503):
                return SourceError(f"{what}: throttled by S3 after retries ({code or status}) "
                                   f"({self.describe()})", "throttled")
            return SourceError(f"{what}: S3 error {code or status}: {err} ({self.describe()})",
                               "s3_error")
        return SourceError(f"{what}: {type(err).__name__}: {err} ({self.describe()})", "other")

    def list_objects(self) -> list[SourceObject]:
        out = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix,
                                           PaginationConfig={"PageSize": 1000}):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    where = split_key(key, self.prefix)
                    if where is None:
                        if not key.endswith("/"):
                            logger.debug("ignoring %s: not inside a model folder", key)
                        continue
                    out.append(SourceObject(
                        key=key, model=where[0], path=where[1], size=int(item["Size"]),
                        etag=str(item["ETag"]),
                        checksum_algorithms=tuple(item.get("ChecksumAlgorithm") or ()),
                    ))
        except Exception as err:
            raise self._fail(f"listing s3://{self.bucket}/{self.prefix}", err) from err
        if not out:
            raise SourceError(
                f"no model objects under s3://{self.bucket}/{self.prefix} (expected "
                f"<prefix>/<model>/model.json, ...) ({self.describe()})", "empty_prefix")
        return out

    def _head(self, key: str) -> dict[str, Any]:
        try:
            resp: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            return resp
        except Exception as err:
            raise self._fail(f"HEAD s3://{self.bucket}/{key}", err) from err

    def download(self, obj: SourceObject, dest: Path, opts: TransferOptions) -> Downloaded:
        restarts = 0
        limiter = RateLimiter(opts.max_bytes_per_s)
        while True:
            try:
                got = self._download_once(obj, dest, opts, limiter)
                return replace(got, restarts=restarts)
            except ObjectChanged:
                restarts += 1
                if restarts > _MAX_CHANGE_RETRIES:
                    raise SourceError(
                        f"s3://{self.bucket}/{obj.key} kept changing during download "
                        f"({restarts} attempts)", "changed_during_download") from None
                head = self._head(obj.key)
                logger.info("s3://%s/%s changed during download (ETag %s -> %s); downloading "
                            "it again", self.bucket, obj.key, obj.etag, head["ETag"])
                obj = replace(obj, etag=str(head["ETag"]), size=int(head["ContentLength"]))

    def _get(self, obj: SourceObject, **kw: Any) -> dict[str, Any]:
        try:
            resp: dict[str, Any] = self.client.get_object(
                Bucket=self.bucket, Key=obj.key, IfMatch=obj.etag, **kw)
        except Exception as err:
            code, status = _client_error_code(err)
            if code == "PreconditionFailed" or status == 412:
                raise ObjectChanged() from err
            if code == "NoSuchKey":
                raise ObjectChanged() from err
            raise self._fail(f"GET s3://{self.bucket}/{obj.key}", err) from err
        if resp.get("ETag") not in (None, obj.etag):
            resp["Body"].close()
            raise ObjectChanged()
        return resp

    def _pump(self, key: str, resp: dict[str, Any], fd: int, offset: int, expect: int,
              opts: TransferOptions, limiter: RateLimiter, digests: Digests | None = None,
              ) -> None:
        from botocore.exceptions import BotoCoreError, FlexibleChecksumError

        body = resp["Body"]
        pos = offset
        try:
            while True:
                if opts.stop.is_set():
                    raise Interrupted()
                try:
                    data = body.read(min(_READ_CHUNK, 256 << 10) if limiter.rate
                                     else _READ_CHUNK)
                except FlexibleChecksumError as err:
                    raise SourceError(f"s3://{self.bucket}/{key}: downloaded bytes fail the S3 "
                                      f"checksum ({err}); the download is discarded",
                                      "checksum") from err
                except (BotoCoreError, OSError) as err:
                    if isinstance(err, OSError) and err.errno is not None:
                        raise  # a local write problem (ENOSPC), not the network
                    raise self._fail(f"reading s3://{self.bucket}/{key}", err) from err
                if not data:
                    break
                limiter.take(len(data))
                if digests is not None:
                    digests.update(data)
                n = os.pwrite(fd, data, pos)
                pos += n
                opts.progress(n)
        finally:
            body.close()
        if pos - offset != expect:
            raise ObjectChanged()  # truncated or grown: treat like a change and start over

    def _download_once(self, obj: SourceObject, dest: Path, opts: TransferOptions,
                       limiter: RateLimiter) -> Downloaded:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        version_id: str | None = None
        sse: str | None = None
        digests: Digests | None = None
        try:
            if obj.size <= opts.chunk_bytes:
                # One GET returns one object version, pinned to the listed one by If-Match;
                # its MD5 and the full-object checksums the response announces
                # (ChecksumMode) are computed on the way and compared after the last byte.
                resp = self._get(obj, ChecksumMode="ENABLED")
                version_id, sse = resp.get("VersionId"), resp.get("ServerSideEncryption")
                single = _all_checksums(resp)
                verifiable = full_object_checksums(resp, obj.etag)
                digests = Digests(tuple(verifiable))
                self._pump(obj.key, resp, fd, 0, obj.size, opts, limiter, digests)
            else:
                os.ftruncate(fd, obj.size)
                ranges = [(a, min(a + opts.chunk_bytes, obj.size) - 1)
                          for a in range(0, obj.size, opts.chunk_bytes)]
                first: dict[str, Any] = {}

                def fetch(r: tuple[int, int]) -> None:
                    resp = self._get(obj, Range=f"bytes={r[0]}-{r[1]}")
                    if r[0] == 0:
                        first.update(VersionId=resp.get("VersionId"),
                                     SSE=resp.get("ServerSideEncryption"))
                    self._pump(obj.key, resp, fd, r[0], r[1] - r[0] + 1, opts, limiter)

                workers = max(1, min(opts.max_concurrency, len(ranges)))
                with ThreadPoolExecutor(workers, thread_name_prefix="a2f-range") as pool:
                    futures = [pool.submit(fetch, r) for r in ranges]
                    try:
                        for fut in futures:
                            fut.result()
                    except BaseException:
                        for fut in futures:
                            fut.cancel()
                        raise
                version_id, sse = first.get("VersionId"), first.get("SSE")
            os.fsync(fd)
        finally:
            os.close(fd)
        if digests is not None:
            verify_file(dest, verifiable, obj.etag, md5_is_etag=sse in (None, "AES256"),
                        digests=digests)
            return Downloaded(obj.etag, obj.size, version_id, single)
        # Ranged: every range was pinned to the listed ETag; the HEAD confirms it and gives
        # the full-object checksums to verify the assembled file against.
        head = self._head(obj.key)
        if str(head["ETag"]) != obj.etag or int(head["ContentLength"]) != obj.size:
            raise ObjectChanged()
        checksum = _all_checksums(head)
        verify_file(dest, full_object_checksums(head, obj.etag), obj.etag,
                    md5_is_etag=sse in (None, "AES256"))
        return Downloaded(obj.etag, obj.size, version_id or head.get("VersionId"), checksum)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


# --------------------------------------------------------------------------------------------
# Local directory (file://), for development and tests without S3


class FileSource:
    """``file:///path``: each subdirectory is a model. The "ETag" is the SHA-256 of the bytes
    (cached by file identity, so an unchanged tree is not re-read at each poll)."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "file" or not parsed.path:
            raise SourceError(f"source {url!r} is not file:///PATH", "config")
        self.url = url
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
                key = full.relative_to(self.root).as_posix()
                where = split_key(key, "")
                if where is None or name.startswith("."):
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
        for _attempt in range(_MAX_CHANGE_RETRIES + 1):
            try:
                digest = hashlib.sha256()
                with open(src, "rb") as fin, open(dest, "wb") as fout:
                    while chunk := fin.read(_READ_CHUNK):
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


def open_source(url: str, endpoint_url: str | None = None, max_concurrency: int = 10,
                region: str | None = None, max_attempts: int = 6) -> Source:
    scheme = urlparse(url).scheme
    if scheme == "s3":
        return S3Source(url, endpoint_url, max_concurrency, region, max_attempts=max_attempts)
    if scheme == "file":
        return FileSource(url)
    raise SourceError(f"source {url!r}: unsupported scheme {scheme!r}; expected s3:// or file://",
                      "config")


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free
