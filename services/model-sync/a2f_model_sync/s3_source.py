"""``s3://bucket/prefix`` through boto3.

A listing is one paginated ``ListObjectsV2`` (key, size and ETag of each object, no
per-object requests). Downloads cannot be fooled by an object that changes while it is read:
every GET carries ``If-Match: <ETag from the listing>`` (S3 answers 412 once the object was
replaced) and the ETag of every response is compared too (for servers that ignore
``If-Match``). A single GET returns one object version, so its bytes are the listed object's.
Objects larger than the multipart chunk size are fetched as parallel ranged GETs written in
place, each pinned to the same ETag; a ``HeadObject`` after the last range confirms ETag and
size and gives the checksums. A replaced object is downloaded again from the start with its
new ETag. Content is then verified (:mod:`.checksums`): the MD5 of a single-part, non-KMS
object must equal its ETag, and full-object S3 checksums must match the bytes. Composite
checksums of multipart uploads are not recomputed. A body that ends early is retried like a
change and reported as ``truncated`` if it keeps ending early.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from a2f_model_sync.checksums import CHECKSUM_ALGORITHMS, Digests, verify_file
from a2f_model_sync.listing import KeyFilter
from a2f_model_sync.source import (
    MAX_CHANGE_RETRIES,
    READ_CHUNK_BYTES,
    Downloaded,
    Interrupted,
    ObjectChanged,
    SourceError,
    SourceObject,
    TransferOptions,
)
from a2f_model_sync.throttle import RateLimiter

logger = logging.getLogger(__name__)


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
        self.keys = KeyFilter()
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
                    where = self.keys.split(key, self.prefix, f"s3://{self.bucket}/")
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
            except ObjectChanged as change:
                restarts += 1
                if restarts > MAX_CHANGE_RETRIES:
                    if change.truncated:
                        raise SourceError(
                            f"s3://{self.bucket}/{obj.key}: the response body ended before "
                            f"its {obj.size} bytes on {restarts} attempts (connection cut or "
                            "a faulty proxy)", "truncated") from None
                    raise SourceError(
                        f"s3://{self.bucket}/{obj.key} kept changing during download "
                        f"({restarts} attempts)", "changed_during_download") from None
                head = self._head(obj.key)
                logger.info("s3://%s/%s %s (ETag %s -> %s); downloading it again", self.bucket,
                            obj.key, "arrived truncated" if change.truncated
                            else "changed during download", obj.etag, head["ETag"])
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
                    data = body.read(min(READ_CHUNK_BYTES, 256 << 10) if limiter.rate
                                     else READ_CHUNK_BYTES)
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
            # short or long: start over like a change (reported as "truncated" if it persists)
            raise ObjectChanged(truncated=True)

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

