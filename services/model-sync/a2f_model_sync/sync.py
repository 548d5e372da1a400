"""One sync pass: list the source, publish every changed model as a complete new version.

For each model whose listing differs from its version record (see :mod:`.manifest`):

1. a staging directory ``.a2f/staging/<model>.<random>/`` on the volume receives hardlinks of
   the unchanged files of the current version and downloads of the new or changed ones (in
   parallel, verified: see :mod:`.s3source`);
2. files other services wrote into the current version (engines, their records, markers,
   caches: anything that is not a source object of the model) are hardlinked in too;
3. the version record is written, the staging directory is renamed to
   ``.a2f/versions/<model>/<version-id>/`` and the model symlink is switched atomically
   (:func:`a2f_volume.versions.switch`); files other services added to the old version in
   the meantime are carried over once more;
4. old versions are garbage-collected by the lease rule of :mod:`a2f_volume.versions`.

Any failure before the switch removes the staging directory: the previous version keeps
serving and nothing partial is ever visible. One process at a time works on a volume
(``.a2f/locks/model-sync.lock``); leftovers of a killed process are removed when the next
pass takes that lock.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from a2f_model_sync.config import SyncConfig
from a2f_model_sync.manifest import ModelPlan, plan_model
from a2f_model_sync.metrics import SyncMetrics
from a2f_model_sync.s3source import (
    Downloaded,
    Interrupted,
    Source,
    SourceError,
    SourceObject,
    StopFlag,
    TransferOptions,
    disk_free_bytes,
    group_by_model,
)
from a2f_volume import versions
from a2f_volume.errors import A2FError
from a2f_volume.layout import (
    VERSIONS_DIR,
    is_model_name,
    is_temp_name,
    locks_dir,
    staging_dir,
    state_dir,
    versions_dir,
)
from a2f_volume.leases import create_lease_file, ensure_lease_files
from a2f_volume.lock import FileLock
from a2f_volume.publish import fsync_dir

logger = logging.getLogger(__name__)

SYNC_LOCK_NAME = "model-sync.lock"
OUR_TEMP_MARK = ".a2f-tmp-"  # the mark of a2f_volume.layout.temp_name
_PROGRESS_EVERY_S = 5.0
_DISK_MARGIN_BYTES = 16 << 20


class SyncFailure(A2FError):
    """A model could not be published; ``kind`` is the metrics label of the cause."""

    status = "UNAVAILABLE"

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class RunReport:
    """Outcome of one pass."""

    result: str = "success"  # success | error | interrupted
    published: dict[str, str] = field(default_factory=dict)  # model -> new version id
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept_without_delete: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    objects_downloaded: int = 0
    bytes_downloaded: int = 0
    duration_s: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)  # S3 HTTP requests by operation

    @property
    def matched(self) -> bool:
        """The volume holds exactly the source's state for every source model."""
        return self.result == "success"


class _Progress:
    """Thread-safe byte counter that logs progress of large downloads every few seconds."""

    def __init__(self, total_bytes: int, total_objects: int, metrics: SyncMetrics) -> None:
        self.total = total_bytes
        self.objects_total = total_objects
        self.done = 0
        self.objects_done = 0
        self._metrics = metrics
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_log = self._start

    def add(self, n: int) -> None:
        self._metrics.bytes_downloaded.inc(n)
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last_log < _PROGRESS_EVERY_S:
                return
            self._last_log = now
            done, objs = self.done, self.objects_done
        rate = done / max(now - self._start, 1e-6)
        logger.info(
            "downloading: %.1f/%.1f MiB (%.0f%%), %d/%d objects, %.1f MiB/s",
            done / 2**20, self.total / 2**20, 100.0 * done / max(self.total, 1), objs,
            self.objects_total, rate / 2**20,
        )

    def object_done(self) -> None:
        with self._lock:
            self.objects_done += 1


class ModelSync:
    """Mirrors a source into a models root; :meth:`run` is one pass."""

    def __init__(
        self,
        config: SyncConfig,
        source: Source,
        metrics: SyncMetrics,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.root = Path(config.dest)
        self._requests_before: dict[str, int] = {}
        if hasattr(source, "on_request"):
            source.on_request = lambda op: metrics.requests.labels(operation=op).inc()

    # -- the pass --------------------------------------------------------------------------

    def run(self) -> RunReport:
        """One complete pass; never raises for source or volume problems (see the report)."""
        t0 = time.monotonic()
        report = RunReport()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._volume_lock():
                self._cleanup_leftovers()
                self._run_locked(report)
        except Interrupted:
            report.result = "interrupted"
        except (SourceError, SyncFailure) as err:
            report.errors.append((err.kind, err.message))
        except OSError as err:
            kind = "disk_full" if err.errno == errno.ENOSPC else "other"
            report.errors.append((kind, f"volume {self.root}: {err}"))
        except Exception as err:  # never let one bad pass end the daemon
            logger.exception("unexpected error in a sync pass")
            report.errors.append(("other", f"{type(err).__name__}: {err}"))
        if report.result != "interrupted" and report.errors:
            report.result = "error"
        report.duration_s = time.monotonic() - t0
        self._record(report)
        return report

    def _record(self, report: RunReport) -> None:
        m = self.metrics
        m.runs.labels(result=report.result).inc()
        m.run_duration.observe(report.duration_s)
        for kind, message in report.errors:
            m.errors.labels(kind=kind).inc()
            logger.error("sync error (%s): %s", kind, message)
        if report.matched:
            m.last_success.set_to_current_time()
        with contextlib.suppress(OSError):
            m.set_model_versions(self.published_versions())
        requests = dict(getattr(self.source, "requests", {}))
        report.requests = {op: n - self._requests_before.get(op, 0)
                           for op, n in requests.items() if n > self._requests_before.get(op, 0)}
        self._requests_before = requests
        logger.info(
            "sync pass %s in %.1f s: %d published %s, %d unchanged, %d removed, %d objects / "
            "%.1f MiB downloaded, requests %s",
            report.result, report.duration_s, len(report.published),
            sorted(report.published.items()), len(report.unchanged), len(report.removed),
            report.objects_downloaded, report.bytes_downloaded / 2**20,
            " ".join(f"{op}={n}" for op, n in sorted(report.requests.items())) or "none",
        )

    def published_versions(self) -> dict[str, str]:
        """model -> current version id of every managed model on the volume."""
        out: dict[str, str] = {}
        if not self.root.is_dir():
            return out
        for entry in sorted(self.root.iterdir()):
            if is_model_name(entry.name) and versions.is_managed(entry):
                with contextlib.suppress(A2FError, OSError):
                    out[entry.name] = versions.current_version(entry)
        return out

    @contextlib.contextmanager
    def _volume_lock(self) -> Iterator[None]:
        lock = FileLock(locks_dir(self.root) / SYNC_LOCK_NAME)
        waited = False
        while not lock.acquire(blocking=False):
            if not waited:
                logger.info("another a2f-model-sync works on %s; waiting for it", self.root)
                waited = True
            if self.stop.wait(0.5):
                raise Interrupted()
        try:
            yield
        finally:
            lock.release()

    def _cleanup_leftovers(self) -> None:
        """Remove staging and temporary links left by a killed process (we hold the lock)."""
        staging = staging_dir(self.root)
        if staging.is_dir():
            for entry in staging.iterdir():
                logger.info("removing leftover staging %s", entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            if not (entry.name.startswith(".") and is_temp_name(entry.name)):
                continue
            if entry.is_symlink():
                entry.unlink(missing_ok=True)  # a switch that never happened
            elif entry.is_dir() and OUR_TEMP_MARK in entry.name:
                shutil.rmtree(entry, ignore_errors=True)  # an adopted folder's old entry

    def _run_locked(self, report: RunReport) -> None:
        listing = group_by_model(self.source.list_objects())
        logger.debug("listed %d models from %s", len(listing), self.source.url)
        plans: dict[str, ModelPlan] = {}
        for model, listed in listing.items():
            try:
                plans[model] = self._plan(model, listed)
            except SyncFailure as err:
                report.errors.append((err.kind, err.message))
        changed = {m: p for m, p in plans.items() if p.changed}
        report.unchanged = sorted(m for m, p in plans.items() if not p.changed)
        if changed:
            self._publish_all(changed, listing, report)
        self._mirror_removals(set(listing), report)
        self._collect_garbage()

    def _plan(self, model: str, listed: dict[str, SourceObject]) -> ModelPlan:
        folder = self.root / model
        if (folder.exists() or folder.is_symlink()) and not versions.is_managed(folder):
            if not self.config.adopt:
                raise SyncFailure(
                    f"{folder} is a plain directory not managed by a2f-model-sync; it is left "
                    f"alone and model {model!r} is not synced (remove it, or pass --adopt / "
                    "A2F_MODEL_SYNC_ADOPT=1 to move it into the versions store)",
                    "plain_folder",
                )
            versions.adopt(self.root, model, source=f"adopted (was a plain folder), now "
                                                     f"{self.source.url}")
        vdir = versions.version_dir_of(folder)
        record = versions.read_record(vdir) if vdir is not None else None
        return plan_model(model, listed, record, vdir)

    def _publish_all(self, plans: dict[str, ModelPlan], listing: dict[str, dict[str,
                     SourceObject]], report: RunReport) -> None:
        total = sum(p.fetch_bytes for p in plans.values())
        count = sum(len(p.fetch) for p in plans.values())
        logger.info("%d models changed (%s): downloading %d objects, %.1f MiB",
                    len(plans), ", ".join(sorted(plans)), count, total / 2**20)
        need = total + _DISK_MARGIN_BYTES
        free = disk_free_bytes(staging_dir(self.root))
        if need > free:
            raise SyncFailure(
                f"disk full: {self.root} has {free / 2**20:.1f} MiB free, the changed models "
                f"need {need / 2**20:.1f} MiB; nothing was downloaded (grow the volume)",
                "disk_full")
        progress = _Progress(total, count, self.metrics)
        workers = self.config.max_concurrency
        with ThreadPoolExecutor(workers, thread_name_prefix="a2f-get") as pool, \
                ThreadPoolExecutor(min(4, len(plans)), thread_name_prefix="a2f-model") as mpool:
            futs = {m: mpool.submit(self._publish_model, p, listing[m], pool, progress)
                    for m, p in plans.items()}
            interrupted = False
            for model, fut in futs.items():
                try:
                    vid, ndown, nbytes = fut.result()
                    report.published[model] = vid
                    report.objects_downloaded += ndown
                    report.bytes_downloaded += nbytes
                except Interrupted:
                    interrupted = True
                except (SourceError, SyncFailure) as err:
                    report.errors.append((err.kind, f"model {model}: {err.message}"))
                except OSError as err:
                    kind = "disk_full" if err.errno == errno.ENOSPC else "other"
                    msg = (f"model {model}: disk full on {self.root} ({err}); staging removed, "
                           "the previous version keeps serving" if kind == "disk_full"
                           else f"model {model}: {err}")
                    report.errors.append((kind, msg))
                except Exception as err:  # a bug or an unforeseen library error: keep serving
                    logger.exception("unexpected error while publishing model %s", model)
                    report.errors.append(("other", f"model {model}: {type(err).__name__}: "
                                                   f"{err}"))
        if interrupted:
            raise Interrupted()

    def _publish_model(
        self,
        plan: ModelPlan,
        listed: dict[str, SourceObject],
        pool: ThreadPoolExecutor,
        progress: _Progress,
    ) -> tuple[str, int, int]:
        model = plan.model
        folder = self.root / model
        old_dir = versions.version_dir_of(folder)
        old_record = versions.read_record(old_dir) if old_dir is not None else None
        stage = staging_dir(self.root) / f"{model}.{secrets.token_hex(4)}"
        stage.mkdir(parents=True)
        try:
            records: dict[str, versions.ObjectRecord] = {}
            for path, rec in plan.keep.items():
                assert old_dir is not None
                versions.link_new_file(old_dir / path, stage / path)
                records[path] = rec
            opts = TransferOptions(
                chunk_bytes=self.config.multipart_chunk_bytes,
                max_concurrency=self.config.max_concurrency,
                max_bytes_per_s=self.config.max_bytes_per_s,
                progress=progress.add,
                stop=StopFlag(self.stop),
            )
            futs: dict[str, Future[Downloaded]] = {}
            for path, obj in plan.fetch.items():
                (stage / path).parent.mkdir(parents=True, exist_ok=True)
                futs[path] = pool.submit(self._fetch_one, obj, stage / path, opts, progress)
            _wait_all_or_first_error(futs.values(), opts.stop)
            nbytes = 0
            for path, fut in futs.items():
                got = fut.result()
                obj = plan.fetch[path]
                records[path] = versions.ObjectRecord(
                    path=path, key=obj.key, size=got.size, etag=got.etag,
                    version_id=got.version_id, checksum=got.checksum)
                nbytes += got.size
            for path, rec in records.items():  # a final check of what will be published
                if (stage / path).stat().st_size != rec.size:
                    raise SyncFailure(f"{path}: size on disk differs from the source's "
                                      f"{rec.size} bytes", "other")
            source_paths = set(listed) | (set(old_record.by_path()) if old_record else set())
            if old_dir is not None:
                versions.carry_over(old_dir, stage, source_paths)
            record = versions.VersionRecord(
                version_id=versions.new_version_id(records.values()), model=model,
                source=self.source.url.rstrip("/") + "/" + model + "/",
                published_at=time.time(),
                objects=tuple(records[p] for p in sorted(records)),
            )
            versions.write_record(stage, record)
            create_lease_file(stage)  # readers lease through a read-only mount
            _fsync_tree(stage)
            vroot = versions_dir(self.root, model)
            vroot.mkdir(parents=True, exist_ok=True)
            final = vroot / record.version_id
            os.rename(stage, final)
            fsync_dir(vroot)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        versions.switch(self.root, model, record.version_id)
        if old_dir is not None:  # engines etc. written into the old version meanwhile
            versions.carry_over(old_dir, final, source_paths)
        logger.info("published model %s version %s (%d objects downloaded, %.1f MiB)",
                    model, record.version_id, len(futs), nbytes / 2**20)
        return record.version_id, len(futs), nbytes

    def _fetch_one(self, obj: SourceObject, dest: Path, opts: TransferOptions,
                   progress: _Progress) -> Downloaded:
        got = self.source.download(obj, dest, opts)
        if got.restarts:
            self.metrics.download_restarts.inc(got.restarts)
        self.metrics.objects_downloaded.inc()
        progress.object_done()
        return got

    def _mirror_removals(self, source_models: set[str], report: RunReport) -> None:
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            if not is_model_name(name) or name in source_models:
                continue
            if not versions.is_managed(entry):
                continue  # a plain folder is never touched
            if self.config.delete:
                versions.unpublish(self.root, name)
                report.removed.append(name)
                logger.info("model %s is gone from %s: removed (--delete)", name,
                            self.source.url)
            else:
                report.kept_without_delete.append(name)
                logger.info("model %s is gone from %s: kept (pass --delete to mirror "
                            "removals)", name, self.source.url)

    def _collect_garbage(self) -> None:
        vroot = state_dir(self.root) / VERSIONS_DIR
        if not vroot.is_dir():
            return
        try:  # versions from before lease files, adopted folders
            ensure_lease_files(self.root)
        except OSError as err:
            logger.warning("cannot create missing lease files under %s: %s", vroot, err)
        for entry in sorted(vroot.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                try:
                    versions.collect_garbage(self.root, entry.name, keep=self.config.keep_versions,
                                             grace_s=self.config.grace_s)
                except OSError as err:
                    logger.warning("garbage collection of %s failed: %s", entry.name, err)
                with contextlib.suppress(OSError):
                    if not any(entry.iterdir()) and not (self.root / entry.name).is_symlink():
                        entry.rmdir()


def _wait_all_or_first_error(futs: Iterable[Future[Downloaded]], stop: StopFlag) -> None:
    """Wait for all downloads of a model; on the first failure stop the others and re-raise
    that failure (not the Interrupted of the siblings it stopped)."""
    pending = set(futs)
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if not f.cancelled() and f.exception() is not None]
        if failed:
            stop.set()
            for f in pending:
                f.cancel()
            wait(pending)
            errors = [f.exception() for f in failed]
            real = [e for e in errors if not isinstance(e, Interrupted)]
            raise (real or errors)[0]  # type: ignore[misc]


def _fsync_tree(top: Path) -> None:
    """fsync every directory of a freshly built tree (files were fsynced when written)."""
    for dirpath, _dirnames, _files in os.walk(top):
        fsync_dir(dirpath)
