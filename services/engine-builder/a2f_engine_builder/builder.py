"""Build, verify and publish one model's engine; the core the CLI and the watcher drive.

For a model folder (possibly a symlink to a version directory, pinned for the whole build
with a lease (:func:`a2f_volume.versions.pin`) so an engine built for version A can never land
in version B, and version A cannot be garbage-collected while it is built):

1. the target is computed and the existing engine checked with the shared validity rule
   (:func:`a2f_volume.engine_record.check_engine`); a valid engine ends the work;
2. the model's build lock is taken (two builders never build one model at once); the
   check is repeated under the lock (another builder may just have published);
3. the content-addressed engine cache ``.a2f/engines/<onnx-sha>-<target-fp>.<ext>`` is
   consulted: a version whose ONNX bytes equal an earlier one's reuses that engine;
4. otherwise the engine is built into a temporary file, loaded, run on seeded inputs and
   compared with ONNX Runtime running the ONNX itself, and only then renamed into the cache;
5. the engine is hardlinked (or copied) into the version directory under a temporary name
   and renamed over ``network.<ext>``, then the record ``network.<ext>.json`` is renamed in,
   then (TensorRT) the seed's ``.gpu_arch`` marker. The previous engine stays until step 5.
   Steps 3 to 5 hold the engine cache's shared lock, so cache collection
   (:mod:`a2f_volume.engine_cache`) never removes an engine between its lookup and its link.

Temporary files of builders that died (``kill -9``, OOM) are swept by :func:`remove_stale_temps`
at start, before each build and periodically by the daemon (see its docstring for the rule).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from a2f_engine.errors import EngineBuildError, EngineLoadError
from a2f_engine.serving_graph import ServingGraphInfo
from a2f_engine.serving_plan import info_from_record
from a2f_engine.targets import Target, target_precision
from a2f_engine.verify import VerificationResult, verify_engine
from a2f_engine_builder.backends import BuildBackend
from a2f_engine_builder.engine_cache import RemoteEngineCache, RemoteRequest
from a2f_engine_builder.metrics import BuilderMetrics
from a2f_engine_builder.serving import ServingCheck, ServingComposer, ServingPlan
from a2f_volume.engine_cache import (
    DEFAULT_KEEP_UNREFERENCED,
    collect_cached_engines,
    using_cache,
)
from a2f_volume.engine_record import (
    EngineRecord,
    check_engine,
    check_engine_file,
    read_record,
    write_record,
)
from a2f_volume.errors import A2FError
from a2f_volume.hashing import HashCache, file_identity
from a2f_volume.layout import (
    ENGINE_RECORD_SUFFIX,
    ModelPaths,
    build_lock_path,
    cached_engine_path,
    engines_dir,
    temp_name,
    timing_cache_dir,
)
from a2f_volume.lock import FileLock
from a2f_volume.publish import atomic_write_text, fsync_dir
from a2f_volume.versions import pin

logger = logging.getLogger(__name__)

#: what verifying an engine reports: the plain network's check or the serving graph's
Verification = VerificationResult | ServingCheck

_OUR_TEMP = re.compile(r"\.a2f-tmp-(\d+)-[0-9a-f]+(\.[a-z]+)?$")
# When this process started: a temp name carrying our pid but older than this was written by
# an earlier process with the same pid (a container's entrypoint is PID 1 after each restart).
PROCESS_STARTED = time.time()
STALE_TEMP_AGE_S = 24 * 3600.0  # untouched this long: stale whoever wrote it


@dataclass(frozen=True)
class Outcome:
    """What :meth:`EngineBuilder.ensure` did for one model."""

    model: str
    result: str  # built | reused | up_to_date | failed | skipped
    reason: str
    onnx_identity: str = ""

    @property
    def ok(self) -> bool:
        return self.result in ("built", "reused", "up_to_date")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_ENGINE_TEMP_PREFIXES = tuple(f".{n}" for n in (
    ModelPaths(Path(".")).engine("tensorrt").name, ModelPaths(Path(".")).engine("onnxruntime").name,
    ModelPaths(Path(".")).gpu_arch_marker.name))


def _writer_gone(pid: int, mtime: float) -> bool:
    """True if the process that wrote a temp file (pid in its name) no longer runs."""
    if pid == os.getpid():
        return mtime < PROCESS_STARTED  # an earlier process that had our pid
    return not _pid_alive(pid)


def remove_stale_temps(directory: Path, prefixes: tuple[str, ...] | None = None,
                       min_age_s: float = 0.0, max_age_s: float = STALE_TEMP_AGE_S) -> int:
    """Remove temporary files that dead builders left (``kill -9``, OOM, a crashed pod).

    Only names made by :func:`a2f_volume.layout.temp_name` (and, with ``prefixes``, only
    those). One is removed when its writer is gone (:func:`_writer_gone`: the pid in its name
    is not alive here, or it is ours but the file predates this process) and it is at least
    ``min_age_s`` old (a pid in another container's namespace is not visible here, so shared
    directories pass an age), or when it was not modified for ``max_age_s``, whoever wrote it.
    """
    now = time.time()
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for e in entries:
        m = _OUR_TEMP.search(e.name)
        if not m or (prefixes and not e.name.startswith(prefixes)):
            continue
        with contextlib.suppress(OSError):
            mtime = e.stat(follow_symlinks=False).st_mtime
            age = now - mtime
            if age < max_age_s and not (_writer_gone(int(m.group(1)), mtime)
                                        and age >= min_age_s):
                continue
            os.unlink(e.path)
            removed += 1
            logger.info("removed stale temporary file %s", e.path)
    return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_atomic_copy(src: Path, dest: Path) -> None:
    """Publish ``src``'s bytes at ``dest`` atomically: hardlink (or copy) to a temp name, rename."""
    tmp = dest.with_name(temp_name(dest.name))
    try:
        try:
            os.link(src, tmp)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(src, tmp)
            _fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _progress(what: str, every_s: float = 30.0) -> Iterator[None]:
    """Log ``what`` with the elapsed time every ``every_s`` while the block runs."""
    done = threading.Event()
    t0 = time.monotonic()

    def beat() -> None:
        while not done.wait(every_s):
            logger.info("%s: still working, %.0fs elapsed", what, time.monotonic() - t0)

    thread = threading.Thread(target=beat, name="build-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class EngineBuilder:
    """Ensures valid engines for the model folders of one volume."""

    def __init__(self, models_root: Path, backend: BuildBackend, hash_cache: HashCache,
                 metrics: BuilderMetrics, serving: ServingComposer | None = None,
                 engine_cache_keep: int = DEFAULT_KEEP_UNREFERENCED) -> None:
        self.models_root = Path(models_root)
        self.serving = serving if serving is not None else ServingComposer()
        self.engine_cache_keep = engine_cache_keep
        self.backend = backend
        self.hash_cache = hash_cache
        self.metrics = metrics
        self.precision = backend.precision  # selects the verification tolerance
        # Temporaries in the shared engine cache are removed only when this old (their
        # writer may live in another pid namespace, e.g. another pod on the same volume).
        self.cache_temp_age_s = 3600.0
        # The shared engine cache in S3 (--engine-cache); None builds locally only.
        self.remote_cache: RemoteEngineCache | None = None

    # -- public ------------------------------------------------------------------------
    def sweep_temps(self, folders: list[Path]) -> int:
        """Remove temporary files that dead builders left (``kill -9``) in model folders
        and the engine cache; each folder only under its model's build lock."""
        removed = 0
        for folder in folders:
            lock = FileLock(build_lock_path(self.models_root, folder.name))
            if not lock.acquire(blocking=False):
                continue  # a live builder works there; it cleans up itself
            try:
                with contextlib.suppress(OSError):
                    removed += remove_stale_temps(folder.resolve(strict=True),
                                                  _ENGINE_TEMP_PREFIXES)
            finally:
                lock.release()
        removed += remove_stale_temps(engines_dir(self.models_root),
                                      min_age_s=self.cache_temp_age_s)
        return removed

    def collect_engine_cache(self) -> int:
        """Remove cached engines no version uses beyond ``engine_cache_keep``; count removed."""
        try:
            done = collect_cached_engines(self.models_root, self.engine_cache_keep)
        except OSError as err:
            logger.warning("engine cache collection on %s failed: %s", self.models_root, err)
            return 0
        return len(done.removed)

    def status(self, folder: Path) -> Outcome:
        """Check only (no lock, no build)."""
        name = folder.name
        try:
            paths = ModelPaths(folder.resolve(strict=True))
            target = self.backend.target(paths.folder)
        except (OSError, A2FError, ValueError) as err:
            return Outcome(name, "failed", str(err))
        res = check_engine(paths, self.backend.backend, target, self.hash_cache)
        if res.record is not None and not self._serving_ok(paths, name, res.record):
            return Outcome(name, "skipped", "engine is not the wanted serving graph")
        return Outcome(name, "up_to_date" if res.valid else "skipped", res.reason)

    def ensure(self, folder: Path, force: bool = False) -> Outcome:
        """Make sure the model behind ``folder`` has a valid engine; never raises."""
        name = folder.name
        self.metrics.init_model(name)
        onnx_ident = ""
        try:
            # Pinned once for the whole build: version A stays version A, and its directory
            # is not garbage-collected before the engine is published into it.
            with pin(folder) as pinned:
                real = pinned.resolve(strict=True)
                paths = ModelPaths(real)
                if not paths.onnx.is_file():
                    raise EngineBuildError(f"ONNX not found: {folder / paths.onnx.name}")
                onnx_ident = file_identity(paths.onnx)
                target = self.backend.target(real)
                if not force:
                    res = check_engine(paths, self.backend.backend, target, self.hash_cache)
                    if res.record is not None and self._serving_ok(paths, name, res.record):
                        return self._up_to_date(name, res.record, res.reason, onnx_ident)
                    logger.info("%s: engine needs a build: %s", name, res.reason)
                lock = FileLock(build_lock_path(self.models_root, name))
                if not lock.acquire(blocking=False):
                    logger.info("%s: another builder holds %s; waiting for it", name,
                                lock.path)
                    lock.acquire()
                try:
                    if not force:
                        res = check_engine(paths, self.backend.backend, target, self.hash_cache)
                        if (res.record is not None
                                and self._serving_ok(paths, name, res.record)):
                            return self._up_to_date(name, res.record, "published by another "
                                                    f"builder: {res.reason}", onnx_ident)
                    return self._build_locked(name, folder, paths, target, force, onnx_ident)
                finally:
                    lock.release()
        except (A2FError, OSError, MemoryError, ValueError, RuntimeError) as err:
            return self._failed(name, folder, err, onnx_ident)
        except Exception as err:  # a bug or an unexpected library error: still contained
            logger.exception("%s: unexpected error while building", name)
            return self._failed(name, folder, err, onnx_ident)

    def verify_file(self, name: str, engine_path: Path, paths: ModelPaths, target: Target,
                    plan: ServingPlan | None = None, serving: ServingGraphInfo | None = None
                    ) -> Verification:
        """Load ``engine_path`` and compare it with ONNX Runtime on the model's ONNX (the
        serving graph ``serving`` of ``plan``: with its post-processing products); raises
        (EngineLoadError, VerificationError) when it does not match. Every engine is checked
        this way before it is published, built here or downloaded from the shared cache."""
        try:
            engine = self.backend.load(engine_path, paths.folder)
        except (EngineLoadError, EngineBuildError):
            raise
        except Exception as err:
            raise EngineLoadError(f"cannot load the engine {engine_path.name}: {err}") from err
        try:
            with _progress(f"{name}: verification"):
                verification: Verification = (
                    self.serving.verify(engine, plan, serving, target_precision(target))
                    if plan is not None and serving is not None else verify_engine(
                        engine, paths.onnx, target_precision(target),
                        opt_shapes=self.backend.opt_shapes(paths.folder)))
        finally:
            engine.close()
        self.metrics.verification_error.labels(name).set(verification.max_abs_error)
        logger.info("%s: verified: max abs error %.3g (atol %g, rtol %g, batches %s)",
                    name, verification.max_abs_error, verification.atol,
                    verification.rtol, list(verification.batches))
        return verification

    # -- internals ---------------------------------------------------------------------
    def _serving_ok(self, paths: ModelPaths, name: str, rec: EngineRecord) -> bool:
        """The engine is the serving-graph composition this builder wants (or the plain
        network when the model gets none)."""
        ok = self.serving.accepts(rec, self.serving.plan(paths.folder, self.backend.backend,
                                                         name))
        if not ok:
            logger.info("%s: engine needs a build: its serving graph is not the one wanted",
                        name)
        return ok

    def _up_to_date(self, name: str, rec: EngineRecord, reason: str,
                    onnx_ident: str) -> Outcome:
        logger.info("%s: engine up to date, nothing to build (%s)", name, reason)
        self.metrics.builds.labels(name, "up_to_date").inc()
        self.metrics.set_engine(name, rec.backend, rec.target_fingerprint, rec.onnx_sha256)
        return Outcome(name, "up_to_date", reason, onnx_ident)

    def _failed(self, name: str, folder: Path, err: BaseException, onnx_ident: str) -> Outcome:
        reason = str(err) or type(err).__name__
        logger.error("Engine build failed: model %s, file %s: %s", name,
                     folder / "network.onnx", reason)
        self.metrics.builds.labels(name, "failed").inc()
        return Outcome(name, "failed", reason, onnx_ident)

    def _build_locked(self, name: str, folder: Path, paths: ModelPaths, target: Target,
                      force: bool, onnx_ident: str) -> Outcome:
        backend = self.backend.backend
        remove_stale_temps(paths.folder, _ENGINE_TEMP_PREFIXES)
        engines_dir(self.models_root).mkdir(parents=True, exist_ok=True)

        onnx_sha = self.hash_cache.sha256(paths.onnx)
        onnx_size = paths.onnx.stat().st_size
        plan = self.serving.plan(paths.folder, backend, name)
        cached = cached_engine_path(self.models_root, self.serving.cache_key(onnx_sha, plan),
                                    target.fingerprint, backend)
        cached_rec_path = cached.with_name(cached.name + ENGINE_RECORD_SUFFIX)
        with using_cache(self.models_root):
            return self._build_or_reuse(name, folder, paths, target, force, onnx_ident,
                                        onnx_sha, onnx_size, cached, cached_rec_path, plan)

    def _build_or_reuse(self, name: str, folder: Path, paths: ModelPaths, target: Target,
                        force: bool, onnx_ident: str, onnx_sha: str, onnx_size: int,
                        cached: Path, cached_rec_path: Path, plan: ServingPlan | None
                        ) -> Outcome:
        backend = self.backend.backend
        engine_dest = paths.engine(backend)
        result = "reused"
        if not force:
            res = check_engine_file(cached, cached_rec_path, backend, None, target,
                                    self.hash_cache)
            cache_ok = (res.record is not None and res.record.onnx_sha256 == onnx_sha
                        and self.serving.accepts(res.record, plan))
        else:
            cache_ok = False
        if cache_ok:
            logger.info("%s: reusing cached engine %s (same ONNX bytes %s, same target %s)",
                        name, cached, onnx_sha[:12], target.fingerprint)
        else:
            def build() -> None:
                self._build_into_cache(name, folder, paths, target, onnx_sha, onnx_size,
                                       cached, cached_rec_path, plan)

            def verify_download(path: Path, rec: EngineRecord) -> Verification:
                if not self.serving.accepts(rec, plan):
                    raise ValueError("its serving graph is not the one this builder composes")
                info = info_from_record(rec.serving_graph) if plan is not None else None
                return self.verify_file(name, path, paths, target, plan, info)

            result = "built"
            if self.remote_cache is None:
                build()
            elif self.remote_cache.obtain(RemoteRequest(
                    name, backend, onnx_sha, target.fingerprint, cached, cached_rec_path,
                    verify=verify_download,
                    cache_key=self.serving.cache_key(onnx_sha, plan)), build):
                result = "reused"
        # The ONNX must still be what the engine was built from (plain folders can change
        # in place; version directories never do).
        if self.hash_cache.sha256(paths.onnx) != onnx_sha:
            raise EngineBuildError(f"{paths.onnx} changed during the build; will rebuild")
        rec = read_record(cached_rec_path)
        rec = EngineRecord.from_json({**rec.to_json(), "model": name,
                                      "engine_file": engine_dest.name})
        _publish_atomic_copy(cached, engine_dest)
        write_record(paths.engine_record(backend), rec)
        marker = self.backend.marker()
        if marker is not None:
            atomic_write_text(paths.gpu_arch_marker, marker + "\n")
        self.metrics.builds.labels(name, result).inc()
        self.metrics.last_success.labels(name).set(time.time())
        self.metrics.set_engine(name, backend, target.fingerprint, onnx_sha)
        logger.info("%s engine created: %s", self.backend.label, folder / engine_dest.name)
        return Outcome(name, result, f"engine {engine_dest} for ONNX {onnx_sha[:12]}",
                       onnx_ident)

    def _build_into_cache(self, name: str, folder: Path, paths: ModelPaths, target: Target,
                          onnx_sha: str, onnx_size: int, cached: Path,
                          cached_rec_path: Path, plan: ServingPlan | None = None) -> None:
        label = self.backend.label
        logger.info("Building %s from ONNX: %s (%s, %d bytes, sha256 %s, target %s)",
                    label, name, folder / paths.onnx.name, onnx_size, onnx_sha[:12],
                    target.fingerprint)
        # Keep the extension: ONNX Runtime picks the ORT format by the ``.ort`` suffix.
        tmp = cached.with_name(temp_name(cached.name) + cached.suffix)
        graph = cached.with_name(temp_name(cached.name) + ".serving.onnx")
        serving = None
        t0 = time.monotonic()
        try:
            if plan is not None:  # build the composed serving graph instead of the network
                serving = self.serving.compose(plan, graph)
            with _progress(f"{name}: {label} build"):
                extra = self.backend.build(graph if serving is not None else paths.onnx,
                                           paths.folder, tmp, timing_cache_dir(self.models_root))
            build_s = time.monotonic() - t0
            logger.info("%s: %s build finished in %.1fs; verifying against ONNX Runtime",
                        name, label, build_s)
            verification = self.verify_file(name, tmp, paths, target, plan, serving)
            _fsync_file(tmp)
            engine_sha = self.hash_cache.sha256(tmp)
            total_s = time.monotonic() - t0
            rec = EngineRecord(
                model=name, backend=self.backend.backend, engine_file=cached.name,
                engine_sha256=engine_sha, engine_size=tmp.stat().st_size,
                onnx_sha256=onnx_sha, onnx_size=onnx_size,
                target_fingerprint=target.fingerprint, target=target.to_json(),
                built_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                build_seconds=round(total_s, 3), verification=verification.to_json(),
                trtexec_command=str(extra.get("trtexec_command", "")),
                serving_graph=serving.to_json() if serving is not None else {})
            os.replace(tmp, cached)
            fsync_dir(cached.parent)
            write_record(cached_rec_path, rec)
            self.metrics.build_seconds.labels(name, self.backend.backend).observe(total_s)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            self.serving.remove(graph)
