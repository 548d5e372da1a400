"""The shared engine cache in S3 (``--engine-cache s3://BUCKET/PREFIX``).

Pods of one GPU type build the same engine from the same ONNX bytes; with the cache, one of
them builds and the others download. Objects under the prefix, per engine key
``<backend>/<onnx-sha256>-<target-fingerprint>/``::

    engine-<engine-sha256>.<ext>   the engine bytes (content-addressed, written first)
    record.json                    {"format": 1, "engine_key": ..., "record": {...}} (last)
    lease.json                     {"holder": ..., "expires_at": unix-seconds} (while building)

A reader trusts a record only when the engine object it names has the recorded size and,
once downloaded (to a temporary file, never more than the recorded size), the recorded
SHA-256; then the engine is verified against the local ONNX exactly like a local build
(:meth:`EngineBuilder.verify_file`) before anything is published. Since S3 makes an object
visible only when its upload completed, and the record is written after its engine, a reader
never sees a partial engine.

Builders of one engine key take turns through ``lease.json``, created with a conditional put
(``If-None-Match: *``; an expired lease is taken over with ``If-Match`` on its ETag): the holder
builds and uploads, the others wait for the record (at most until the lease expires) and
download. Every S3 failure (outage, missing permission, a store without conditional writes)
is logged as a warning, counted in ``a2f_engine_builder_engine_cache_errors_total`` and ends
in a local build: the cache never blocks a build and never publishes an unverified engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, Counter

from a2f_engine.verify import VerificationResult
from a2f_engine_builder.serving import ServingCheck
from a2f_volume.engine_record import EngineRecord, read_record, write_record
from a2f_volume.errors import A2FError
from a2f_volume.layout import temp_name
from a2f_volume.publish import fsync_dir

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
#: Largest engine the cache downloads (a TensorRT diffusion engine is a few hundred MiB).
MAX_ENGINE_BYTES = 8 << 30
#: Largest record / lease object read.
MAX_SMALL_OBJECT_BYTES = 1 << 20
#: How long a lease lets one builder build alone; a build that takes longer is not cut, but
#: another builder may then build the same engine too (wasted work, never a wrong engine).
LEASE_TTL_S = 1800.0
#: How often a waiting builder looks for the record of the lease holder.
POLL_S = 5.0
_CHUNK = 1 << 20

LookupResult = Literal["hit", "miss", "rejected", "error"]


class EngineCacheError(A2FError):
    """The shared engine cache could not be used (bad URL, S3 failure)."""


@dataclass(frozen=True)
class RemoteRequest:
    """One engine the builder needs: where it goes locally and how to verify a download."""

    name: str
    backend: str
    onnx_sha256: str
    target_fingerprint: str
    cached: Path  # the local content-addressed engine file
    cached_record: Path  # its record
    #: verifies a downloaded engine file given its cache record; raises when unusable
    verify: Callable[[Path, EngineRecord], VerificationResult | ServingCheck] = field(
        compare=False)
    #: the ONNX hash mixed with the serving-graph composition (empty: the ONNX hash)
    cache_key: str = ""

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.cache_key or self.onnx_sha256}-{self.target_fingerprint}"


def parse_cache_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix with a trailing slash or empty)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise EngineCacheError(f"engine cache {url!r} is not s3://BUCKET/PREFIX")
    prefix = parsed.path.strip("/")
    return parsed.netloc, prefix + "/" if prefix else ""


def _error_code(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class CacheMetrics:
    """``a2f_engine_builder_engine_cache_*`` metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ns = "a2f_engine_builder_engine_cache"
        self.lookups = Counter(
            f"{ns}_lookups", "Lookups in the shared engine cache by result (hit: downloaded "
            "and verified; miss: no entry; rejected: entry failed the size, hash or "
            "verification check; error: S3 failed).", ["result"], registry=registry)
        self.uploads = Counter(
            f"{ns}_uploads", "Engines uploaded to the shared engine cache after a local build, "
            "by result.", ["result"], registry=registry)
        self.errors = Counter(
            f"{ns}_errors", "S3 failures of the shared engine cache by operation (each one "
            "degrades to a local build).", ["op"], registry=registry)
        self.lease_waits = Counter(
            f"{ns}_lease_waits", "Times a builder waited for another builder's upload of the "
            "same engine.", registry=registry)
        self.downloaded_bytes = Counter(
            f"{ns}_downloaded_bytes", "Engine bytes downloaded from the cache.",
            registry=registry)
        for r in ("hit", "miss", "rejected", "error"):
            self.lookups.labels(r)
        for r in ("uploaded", "error"):
            self.uploads.labels(r)
        for op in ("lookup", "lease", "upload"):
            self.errors.labels(op)


@dataclass
class _Lease:
    key: str
    holder: str
    etag: str


class RemoteEngineCache:
    """Download, verify and install engines from S3; upload what was built here."""

    def __init__(self, url: str, registry: CollectorRegistry, *, client: Any = None,
                 endpoint_url: str | None = None, lease_ttl_s: float = LEASE_TTL_S,
                 poll_s: float = POLL_S, max_engine_bytes: int = MAX_ENGINE_BYTES) -> None:
        self.url = url
        self.bucket, self.prefix = parse_cache_url(url)
        self.lease_ttl_s = lease_ttl_s
        self.poll_s = poll_s
        self.max_engine_bytes = max_engine_bytes
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.metrics = CacheMetrics(registry)
        self.stop = threading.Event()  # set to end a wait for another builder early
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url or None,
                config=Config(retries={"mode": "standard", "max_attempts": 3},
                              connect_timeout=5, read_timeout=60))
        self.client = client

    # -- the one entry point -----------------------------------------------------------
    def obtain(self, req: RemoteRequest, build: Callable[[], None]) -> bool:
        """Fill ``req.cached`` (+ record): from S3 when a verified engine is there (True),
        else by ``build()`` (False), uploading the result. Build errors propagate."""
        state, etag = self._fetch(req)
        if state == "hit":
            return True
        lease = None
        if state != "error":  # S3 answered: take turns with the other builders
            lease, fresh = self._lease_or_wait(req, etag)
            if fresh:  # another builder uploaded while we waited
                if lease is not None:
                    self._release(lease)
                    lease = None
                if self._fetch(req)[0] == "hit":
                    return True
        try:
            build()
            self._upload(req)
        finally:
            if lease is not None:
                self._release(lease)
        return False

    # -- lookup and download -----------------------------------------------------------
    def _obj(self, req: RemoteRequest, leaf: str) -> str:
        return f"{self.prefix}{req.key}/{leaf}"

    def _get_small(self, key: str) -> tuple[Any, str] | None:
        """A small JSON object and its ETag, or None when missing (S3 errors propagate)."""
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if _error_code(err) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        body = resp["Body"]
        try:
            data = body.read(MAX_SMALL_OBJECT_BYTES + 1)
        finally:
            body.close()
        if len(data) > MAX_SMALL_OBJECT_BYTES:
            raise ValueError(f"s3://{self.bucket}/{key} is larger than "
                             f"{MAX_SMALL_OBJECT_BYTES} bytes")
        return json.loads(data), str(resp.get("ETag", ""))

    def _parse_entry(self, req: RemoteRequest, doc: Any) -> tuple[EngineRecord, str]:
        """The record and engine object key of a cache entry; ValueError when unusable."""
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"cache entry format {found!r}, expected {CACHE_FORMAT}")
        rec = EngineRecord.from_json(doc.get("record"))
        engine_key = str(doc.get("engine_key") or "")
        if (rec.backend, rec.onnx_sha256, rec.target_fingerprint) != \
                (req.backend, req.onnx_sha256, req.target_fingerprint):
            raise ValueError(f"cache entry is for {rec.backend}/{rec.onnx_sha256[:12]}/"
                             f"{rec.target_fingerprint}, not {req.key}")
        if not engine_key.startswith(f"{self.prefix}{req.key}/engine-"):
            raise ValueError(f"cache entry names engine object {engine_key!r} outside its key")
        if not 0 < rec.engine_size <= self.max_engine_bytes:
            raise ValueError(f"cache entry engine size {rec.engine_size} is outside "
                             f"1..{self.max_engine_bytes} bytes")
        return rec, engine_key

    def _fetch(self, req: RemoteRequest) -> tuple[LookupResult, str]:
        """Download, check and verify the cached engine; install it locally on a hit.
        Returns the result and the ETag of the record looked at ("" when none)."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.bucket}/{self.prefix}{req.key}/"
        try:
            got = self._get_small(self._obj(req, "record.json"))
        except (BotoCoreError, ClientError, OSError, ValueError) as err:
            self._degraded("lookup", req, f"cannot read the cache entry {where}: {err}")
            return "error", ""
        if got is None:
            logger.info("%s: no engine in the shared cache at %s", req.name, where)
            self.metrics.lookups.labels("miss").inc()
            return "miss", ""
        etag = got[1]
        try:
            rec, engine_key = self._parse_entry(req, got[0])
        except ValueError as err:
            logger.warning("%s: ignoring the cache entry %s: %s", req.name, where, err)
            self.metrics.lookups.labels("rejected").inc()
            return "rejected", etag
        tmp = req.cached.with_name(temp_name(req.cached.name) + req.cached.suffix)
        try:
            try:
                self._download(engine_key, rec, tmp)
            except (BotoCoreError, ClientError, OSError) as err:
                self._degraded("lookup", req, f"cannot download s3://{self.bucket}/"
                                              f"{engine_key}: {err}")
                return "error", etag
            logger.info("%s: downloaded %s (%d bytes) from the shared cache; verifying against "
                        "the ONNX", req.name, engine_key, rec.engine_size)
            try:
                verification = req.verify(tmp, rec)
            except (A2FError, RuntimeError, ValueError, OSError) as err:
                raise _Rejected(f"verification failed: {err}") from err
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, req.cached)
            fsync_dir(req.cached.parent)
            write_record(req.cached_record, replace(
                rec, engine_file=req.cached.name, source="cache",
                verification=verification.to_json()))
        except _Rejected as err:
            logger.warning("%s: rejected the cached engine s3://%s/%s: %s; building locally",
                           req.name, self.bucket, engine_key, err)
            self.metrics.lookups.labels("rejected").inc()
            return "rejected", etag
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.metrics.lookups.labels("hit").inc()
        logger.info("%s: engine from the shared cache verified and installed (built %s on "
                    "target %s)", req.name, rec.built_at, rec.target_fingerprint)
        return "hit", etag

    def _download(self, engine_key: str, rec: EngineRecord, tmp: Path) -> None:
        """The engine object into ``tmp``: never more than the recorded size, hash checked."""
        resp = self.client.get_object(Bucket=self.bucket, Key=engine_key)
        body = resp["Body"]
        length = int(resp.get("ContentLength", -1))
        if length != rec.engine_size:
            body.close()
            raise _Rejected(f"object has {length} bytes, the record says {rec.engine_size}")
        digest = hashlib.sha256()
        got = 0
        try:
            with open(tmp, "wb") as f:
                while chunk := body.read(min(_CHUNK, rec.engine_size + 1 - got)):
                    got += len(chunk)
                    if got > rec.engine_size:
                        raise _Rejected(f"object is longer than the recorded "
                                        f"{rec.engine_size} bytes")
                    digest.update(chunk)
                    f.write(chunk)
        finally:
            body.close()
        self.metrics.downloaded_bytes.inc(got)
        if got != rec.engine_size:
            raise _Rejected(f"object ended after {got} of {rec.engine_size} bytes")
        if digest.hexdigest() != rec.engine_sha256:
            raise _Rejected(f"sha256 {digest.hexdigest()[:12]} does not match the record's "
                            f"{rec.engine_sha256[:12]}")

    def _degraded(self, op: str, req: RemoteRequest, why: str) -> None:
        logger.warning("%s: shared engine cache unavailable (%s); building locally", req.name,
                       why)
        self.metrics.errors.labels(op).inc()
        if op == "lookup":
            self.metrics.lookups.labels("error").inc()

    # -- leases ------------------------------------------------------------------------
    def _lease_or_wait(self, req: RemoteRequest, seen_etag: str) -> tuple[_Lease | None, bool]:
        """(our lease or None, whether a record other than ``seen_etag`` appeared).

        Without a lease and without a new record (leases unusable, the wait ended), this
        builder builds without a lease: the worst case is a duplicate build."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._obj(req, "lease.json")
        waited = False
        deadline = time.monotonic() + self.lease_ttl_s
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if self._new_record(req, seen_etag):
                    return None, True
                lease = self._try_lease(key)
                if lease is not None:
                    # The holder may have uploaded and released just before we took it.
                    return lease, self._new_record(req, seen_etag)
                current = self._get_small(key)
            except (BotoCoreError, ClientError, OSError, ValueError) as err:
                self._degraded("lease", req, f"cannot take the build lease {key}: {err}")
                return None, False
            if current is None:
                continue  # released just now: look again
            doc = current[0] if isinstance(current[0], dict) else {}
            expires = float(doc.get("expires_at", 0) or 0)
            if expires <= time.time():
                if self._take_over(key, current[1]):
                    return _Lease(key, self.holder, ""), False
                continue
            if not waited:
                waited = True
                self.metrics.lease_waits.inc()
                logger.info("%s: %s is building this engine (lease until %s UTC); waiting for "
                            "its upload", req.name, doc.get("holder", "?"),
                            time.strftime("%H:%M:%S", time.gmtime(expires)))
            self.stop.wait(self.poll_s)
        return None, False

    def _new_record(self, req: RemoteRequest, seen_etag: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._obj(req, "record.json"))
        except ClientError as err:
            if _error_code(err) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return str(head.get("ETag", "")) != seen_etag

    def _lease_body(self) -> bytes:
        return json.dumps({"holder": self.holder,
                           "expires_at": time.time() + self.lease_ttl_s}).encode()

    def _try_lease(self, key: str) -> _Lease | None:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=self._lease_body(),
                                          IfNoneMatch="*", ContentType="application/json")
        except ClientError as err:
            if _error_code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "412",
                                    "409"):
                return None
            raise
        return _Lease(key, self.holder, str(resp.get("ETag", "")))

    def _take_over(self, key: str, etag: str) -> bool:
        """Replace an expired lease, only if it is still the one we read."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=self._lease_body(),
                                   IfMatch=etag, ContentType="application/json")
        except ClientError as err:
            if _error_code(err) in ("PreconditionFailed", "ConditionalRequestConflict",
                                    "NoSuchKey", "412", "409", "404"):
                return False
            raise
        logger.info("took over the expired build lease %s", key)
        return True

    def _release(self, lease: _Lease) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self._get_small(lease.key)
            if got is not None and isinstance(got[0], dict) and \
                    got[0].get("holder") == lease.holder:
                self.client.delete_object(Bucket=self.bucket, Key=lease.key)
        except (BotoCoreError, ClientError, OSError, ValueError) as err:
            # It expires by itself; another builder then takes it over.
            logger.warning("cannot release the build lease %s: %s", lease.key, err)
            self.metrics.errors.labels("lease").inc()

    # -- upload ------------------------------------------------------------------------
    def _upload(self, req: RemoteRequest) -> None:
        """Engine object first, record last (a reader never sees a record without its
        engine); failures only cost the next pod a build."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            rec = read_record(req.cached_record)
            engine_key = self._obj(req, f"engine-{rec.engine_sha256}{req.cached.suffix}")
            self.client.upload_file(str(req.cached), self.bucket, engine_key)
            doc = {"format": CACHE_FORMAT, "engine_key": engine_key,
                   "record": {**rec.to_json(), "engine_file": Path(engine_key).name}}
            self.client.put_object(Bucket=self.bucket, Key=self._obj(req, "record.json"),
                                   Body=json.dumps(doc, indent=1).encode(),
                                   ContentType="application/json")
        except (BotoCoreError, ClientError, OSError, ValueError) as err:
            logger.warning("%s: cannot upload the engine to the shared cache %s: %s", req.name,
                           self.url, err)
            self.metrics.errors.labels("upload").inc()
            self.metrics.uploads.labels("error").inc()
            return
        self.metrics.uploads.labels("uploaded").inc()
        logger.info("%s: uploaded the engine to s3://%s/%s (%d bytes)", req.name, self.bucket,
                    engine_key, rec.engine_size)


class _Rejected(Exception):
    """A downloaded engine failed a check; it is discarded and built locally instead."""
