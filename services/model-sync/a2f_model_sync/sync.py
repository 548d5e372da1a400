"""One sync pass: list the source, publish every changed model as a complete new version.

For each model whose listing differs from its version record (see :mod:`.manifest`):

1. a staging directory ``.a2f/staging/<model>.<random>/`` on the volume receives hardlinks of
   the unchanged files of the current version and downloads of the new or changed ones (in
   parallel, verified: see :mod:`.s3_source`);
2. files other services wrote into the current version (engines, their records, markers,
   caches: anything that is not a source object of the model) are hardlinked in too;
3. the version record is written, the staging directory is renamed to
   ``.a2f/versions/<model>/<version-id>/`` and the model symlink is switched atomically
   (:func:`a2f_volume.versions.switch`); files other services added to the old version in
   the meantime are carried over once more;
4. after every pass, whatever the publish step did, removals are mirrored (when the source
   was listed), old versions are garbage-collected by the lease rule of
   :mod:`a2f_volume.versions` and unused cached engines by :mod:`a2f_volume.engine_cache`.

Any failure before the switch removes the staging directory: the previous version keeps
serving and nothing partial is ever visible. Failures are isolated: a model whose version
record cannot be read is republished from the source (one warning, ``errors{kind=
"bad_record"}``); a model that fails does not stop the others. A pass that lacks disk space
first frees what it may (expired unleased versions, unused cached engines) and tries once
more; models that still do not fit are reported as ``disk_full``, the others go on.

One process at a time works on a volume (``.a2f/locks/model-sync.lock``); leftovers of a
killed process are removed when the next pass takes that lock.
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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from a2f_model_sync.adoption import verified_record
from a2f_model_sync.config import SyncConfig
from a2f_model_sync.downloads import DownloadProgress, wait_all_or_first_error
from a2f_model_sync.housekeeping import collect_garbage, disk_free_bytes, mirror_removals
from a2f_model_sync.listing import group_by_model
from a2f_model_sync.manifest import ModelPlan, plan_model
from a2f_model_sync.metrics import SyncMetrics
from a2f_model_sync.source import (
    Downloaded,
    Interrupted,
    Source,
    SourceError,
    SourceObject,
    StopFlag,
    TransferOptions,
)
from a2f_volume import versions
from a2f_volume.errors import A2FError
from a2f_volume.layout import (
    is_model_name,
    is_temp_name,
    locks_dir,
    staging_dir,
    versions_dir,
)
from a2f_volume.leases import create_lease_file, ensure_lease_files
from a2f_volume.lock import FileLock
from a2f_volume.publish import fsync_dir
from a2f_volume.scan import list_dir

logger = logging.getLogger(__name__)

SYNC_LOCK_NAME = "model-sync.lock"
OUR_TEMP_MARK = ".a2f-tmp-"  # the mark of a2f_volume.layout.temp_name
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
    listed: list[str] | None = None  # models of the source listing; None if not listed
    objects_downloaded: int = 0
    bytes_downloaded: int = 0
    duration_s: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)  # S3 HTTP requests by operation

    @property
    def matched(self) -> bool:
        """The volume holds exactly the source's state for every source model."""
        return self.result == "success"


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
        keys = getattr(source, "keys", None)
        if keys is not None:
            keys.on_skip = lambda reason: metrics.skipped_objects.labels(reason=reason).inc()
        self._bad_records_warned: set[str] = set()

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

    def source_problem(self, report: RunReport) -> str:
        """Why the source could not be listed in this pass ("" if it was)."""
        if report.listed is not None or not report.errors:
            return ""
        return f"{report.errors[0][0]}: {report.errors[0][1]}"


    def _record(self, report: RunReport) -> None:
        m = self.metrics
        m.runs.labels(result=report.result).inc()
        m.run_duration.observe(report.duration_s)
        if report.result != "interrupted":
            m.source_up.set(0 if report.listed is None else 1)
            if report.matched:
                m.consecutive_failed_runs.set(0)
            else:
                m.consecutive_failed_runs.inc()
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
        for entry in list_dir(self.root):
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
        for entry in list_dir(self.root):
            if not (entry.name.startswith(".") and is_temp_name(entry.name)):
                continue
            if entry.is_symlink():
                entry.unlink(missing_ok=True)  # a switch that never happened
            elif entry.is_dir() and OUR_TEMP_MARK in entry.name:
                shutil.rmtree(entry, ignore_errors=True)  # an adopted folder's old entry

    def _run_locked(self, report: RunReport) -> None:
        listing: dict[str, dict[str, SourceObject]] | None = None
        try:
            listing = group_by_model(self.source.list_objects())
            report.listed = sorted(listing)
            logger.debug("listed %d models from %s", len(listing), self.source.url)
            plans: dict[str, ModelPlan] = {}
            for model, listed in listing.items():
                try:
                    plans[model] = self._plan(model, listed)
                except SyncFailure as err:
                    report.errors.append((err.kind, err.message))
                except (A2FError, OSError) as err:  # this model only; the others go on
                    kind = "disk_full" if getattr(err, "errno", None) == errno.ENOSPC \
                        else "other"
                    report.errors.append((kind, f"model {model}: {err}"))
            changed = {m: p for m, p in plans.items() if p.changed}
            report.unchanged = sorted(m for m, p in plans.items() if not p.changed)
            if changed:
                self._publish_all(changed, listing, report)
        finally:
            # Whatever the publish step did (even a failure or an interruption): mirror
            # removals of a listed source, then collect garbage, so space is freed.
            if listing is not None:
                try:
                    self._mirror_removals(set(listing), report)
                except OSError as err:
                    logger.warning("mirroring removals on %s failed: %s", self.root, err)
            self._collect_garbage()

    def _read_record_or_repair(self, model: str, vdir: Path) -> versions.VersionRecord | None:
        """The version record; None (the model is republished in full) if it is corrupt."""
        try:
            return versions.read_record(vdir)
        except versions.VersionError as err:
            key = f"{vdir}"
            if key not in self._bad_records_warned:
                self._bad_records_warned.add(key)
                self.metrics.errors.labels(kind="bad_record").inc()
                logger.warning("model %s: %s; republishing it from the source (the other "
                               "models are not affected)", model, err.message)
            return None

    def _plan(self, model: str, listed: dict[str, SourceObject]) -> ModelPlan:
        folder = self.root / model
        if (folder.exists() or folder.is_symlink()) and not versions.is_managed(folder):
            if not self.config.adopt:
                raise SyncFailure(
                    f"{folder} is a plain directory not managed by a2f-model-sync; it is left "
                    f"alone and model {model!r} is not synced (remove it, or leave --adopt / "
                    "A2F_MODEL_SYNC_ADOPT at its default, on, to move it into the versions "
                    "store)",
                    "plain_folder",
                )
            versions.adopt(self.root, model, source=f"adopted (was a plain folder), now "
                                                     f"{self.source.url}")
        vdir = versions.version_dir_of(folder)
        record = self._read_record_or_repair(model, vdir) if vdir is not None else None
        if vdir is not None and record is not None and not record.objects \
                and record.version_id.startswith("adopted-"):
            record = verified_record(vdir, record, listed)
        return plan_model(model, listed, record, vdir)

    def _publish_all(self, plans: dict[str, ModelPlan], listing: dict[str, dict[str,
                     SourceObject]], report: RunReport) -> None:
        total = sum(p.fetch_bytes for p in plans.values())
        count = sum(len(p.fetch) for p in plans.values())
        logger.info("%d models changed (%s): downloading %d objects, %.1f MiB",
                    len(plans), ", ".join(sorted(plans)), count, total / 2**20)
        plans = self._fit_in_free_space(plans, total, report)
        if not plans:
            return
        total = sum(p.fetch_bytes for p in plans.values())
        count = sum(len(p.fetch) for p in plans.values())
        progress = DownloadProgress(total, count, self.metrics)
        workers = self.config.max_concurrency
        with ThreadPoolExecutor(workers, thread_name_prefix="a2f-get") as pool, \
                ThreadPoolExecutor(min(4, len(plans)), thread_name_prefix="a2f-model") as mpool:
            futs = {m: mpool.submit(self._publish_model, p, listing[m], pool, progress)
                    for m, p in plans.items()}
            interrupted = False
            out_of_space: list[str] = []
            for model, fut in futs.items():
                interrupted |= self._collect_result(model, fut, report, out_of_space)
            if out_of_space and not interrupted and self._free_space() > 0:
                logger.info("disk filled while publishing %s; space was freed, trying once "
                            "more", ", ".join(out_of_space))
                report.errors = [e for e in report.errors if not (
                    e[0] == "disk_full" and any(f"model {m}:" in e[1] for m in out_of_space))]
                for model in out_of_space:
                    fut = mpool.submit(self._publish_model, plans[model], listing[model], pool,
                                       progress)
                    interrupted |= self._collect_result(model, fut, report, [])
        if interrupted:
            raise Interrupted()

    def _collect_result(self, model: str, fut: Future[tuple[str, int, int]], report: RunReport,
                        out_of_space: list[str]) -> bool:
        """Record one model's publish outcome; True if it was interrupted."""
        try:
            vid, ndown, nbytes = fut.result()
            report.published[model] = vid
            report.objects_downloaded += ndown
            report.bytes_downloaded += nbytes
        except Interrupted:
            return True
        except (SourceError, SyncFailure) as err:
            report.errors.append((err.kind, f"model {model}: {err.message}"))
        except OSError as err:
            kind = "disk_full" if err.errno == errno.ENOSPC else "other"
            if kind == "disk_full":
                out_of_space.append(model)
            msg = (f"model {model}: disk full on {self.root} ({err}); staging removed, "
                   "the previous version keeps serving" if kind == "disk_full"
                   else f"model {model}: {err}")
            report.errors.append((kind, msg))
        except Exception as err:  # a bug or an unforeseen library error: keep serving
            logger.exception("unexpected error while publishing model %s", model)
            report.errors.append(("other", f"model {model}: {type(err).__name__}: {err}"))
        return False

    def _fit_in_free_space(self, plans: dict[str, ModelPlan], total: int,
                           report: RunReport) -> dict[str, ModelPlan]:
        """The plans that fit on the volume, after freeing space once if they do not."""
        free = disk_free_bytes(staging_dir(self.root))
        if total + _DISK_MARGIN_BYTES <= free:
            return plans
        logger.warning("the changed models need %.1f MiB (+%.0f MiB margin) but %s has %.1f "
                       "MiB free: freeing expired versions and unused cached engines first",
                       total / 2**20, _DISK_MARGIN_BYTES / 2**20, self.root, free / 2**20)
        self._free_space()
        free = disk_free_bytes(staging_dir(self.root))
        budget = free - _DISK_MARGIN_BYTES
        fitting: dict[str, ModelPlan] = {}
        for model, plan in sorted(plans.items(), key=lambda mp: mp[1].fetch_bytes):
            if plan.fetch_bytes <= budget:
                fitting[model] = plan
                budget -= plan.fetch_bytes
            else:
                report.errors.append((
                    "disk_full",
                    f"model {model}: disk full: {self.root} has {free / 2**20:.1f} MiB free "
                    f"after garbage collection, the model needs {plan.fetch_bytes / 2**20:.1f} "
                    f"MiB (+{_DISK_MARGIN_BYTES / 2**20:.0f} MiB margin); nothing was "
                    "downloaded, the previous version keeps serving (grow the volume, or "
                    "lower --grace-s / --keep-versions)"))
        return fitting

    def _free_space(self) -> int:
        """Collect expired versions and every unused cached engine; bytes freed."""
        before = disk_free_bytes(staging_dir(self.root))
        self._collect_garbage(engine_keep=0)
        freed = max(0, disk_free_bytes(staging_dir(self.root)) - before)
        logger.info("freed %.1f MiB on %s", freed / 2**20, self.root)
        return freed

    def _publish_model(
        self,
        plan: ModelPlan,
        listed: dict[str, SourceObject],
        pool: ThreadPoolExecutor,
        progress: DownloadProgress,
    ) -> tuple[str, int, int]:
        model = plan.model
        folder = self.root / model
        old_dir = versions.version_dir_of(folder)
        old_record = self._read_record_or_repair(model, old_dir) if old_dir is not None \
            else None
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
            wait_all_or_first_error(futs.values(), opts.stop)
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
                   progress: DownloadProgress) -> Downloaded:
        got = self.source.download(obj, dest, opts)
        if got.restarts:
            self.metrics.download_restarts.inc(got.restarts)
        self.metrics.objects_downloaded.inc()
        progress.object_done()
        return got

    def _mirror_removals(self, source_models: set[str], report: RunReport) -> None:
        removed, kept = mirror_removals(self.root, source_models, self.config.delete,
                                        self.source.url)
        report.removed.extend(removed)
        report.kept_without_delete.extend(kept)

    def _collect_garbage(self, engine_keep: int | None = None) -> None:
        try:  # lease files of versions from before they existed, of adopted folders
            ensure_lease_files(self.root)
        except OSError as err:
            logger.warning("cannot create missing lease files under %s: %s", self.root, err)
        collect_garbage(self.root, self.config.keep_versions, self.config.grace_s,
                        self.config.engine_cache_keep if engine_keep is None else engine_keep)


def _fsync_tree(top: Path) -> None:
    """fsync every directory of a freshly built tree (files were fsynced when written)."""
    for dirpath, _dirnames, _files in os.walk(top):
        fsync_dir(dirpath)
