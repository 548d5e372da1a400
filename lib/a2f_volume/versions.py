"""Model versions on the volume: records, the atomic folder switch, leases and their GC.

A model folder managed by model-sync is a *symlink*::

    <root>/<model>  ->  .a2f/versions/<model>/<version-id>/

Each version directory is complete before it becomes visible and is never modified in place
by the sync (other services may add their own files: engines, records, markers, caches).
Publishing a version means: build it under ``.a2f/staging/`` (same filesystem), rename it to
``.a2f/versions/<model>/<version-id>/``, create a new symlink under a temporary name and
``os.replace`` it over ``<root>/<model>``, then ``fsync`` the root directory
(:func:`switch`). A reader that opens ``<root>/<model>/model.json`` therefore resolves either
the old complete directory or the new complete one, never a mix. A reader that needs *several*
files to come from the same version resolves the folder once and reads through the resolved
path, which :func:`pin` returns.

Leases keep a previous version readable while someone uses it. ``pin(folder)`` resolves the
folder to its version directory and holds a shared ``flock`` on
``<version dir>/.a2f-lease`` until the context exits (or the holder dies: the kernel drops
the lock even on ``kill -9``). model-sync creates the lease file with every version it
publishes (and for older versions at start), so readers open it read-only and may mount the
volume read-only; a reader creates it only where it is missing and the directory writable
(:mod:`a2f_volume.leases`). Readers that should pin: the engine-builder during a build, the
inference server while it loads a version, and, if it wants, while a stream uses it.

Garbage collection (:func:`collect_garbage`, run by model-sync after each publish) removes a
version directory only when **all** of these hold:

1. it is not the current version (the one the symlink points to);
2. it was superseded more than ``grace_s`` ago (default 600 s) — the superseded time is the
   publish time of the next newer version, so a reader that resolved the symlink just before a
   switch has the grace period to take its lease;
3. ``flock(LOCK_EX | LOCK_NB)`` on its lease succeeds, i.e. no one holds a lease.

Beyond that, at most ``keep`` old versions (default 2) are kept even if young; older unleased
ones go first. A leased version is never removed. Removal renames the directory to a hidden
trash name (while still holding the exclusive lock) before deleting it, so a reader that
tries to pin it after that finds it gone and re-resolves the folder.

A plain directory at ``<root>/<model>`` is not managed: it is never modified, and
:func:`switch` refuses to replace it; :func:`adopt` moves it into the versions store first
(explicit operator decision, ``a2f-model-sync --adopt``). :func:`current_version` gives every
service one id for "what is in this folder now": the version record's id for a managed
folder, or for a plain folder a stable id derived from the names, sizes and mtimes of its
model files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from a2f_volume.errors import A2FError
from a2f_volume.layout import (
    ENGINE_RECORD_SUFFIX,
    GPU_ARCH_MARKER,
    ORT_ENGINE_NAME,
    TRT_ENGINE_NAME,
    VERSION_RECORD,
    is_temp_name,
    temp_name,
    versions_dir,
)
from a2f_volume.leases import LEASE_FILE, open_lease, warn_unleased
from a2f_volume.publish import atomic_write_json, fsync_dir

logger = logging.getLogger(__name__)

RECORD_SCHEMA = 1
DEFAULT_GRACE_S = 600.0
DEFAULT_KEEP = 2
_TRASH_MARK = ".trash-"

# Files written into a model folder by services other than the sync: never S3 objects of the
# model, never part of a plain folder's model-file id.
_FOREIGN_NAMES = frozenset(
    {
        TRT_ENGINE_NAME,
        ORT_ENGINE_NAME,
        TRT_ENGINE_NAME + ENGINE_RECORD_SUFFIX,
        ORT_ENGINE_NAME + ENGINE_RECORD_SUFFIX,
        GPU_ARCH_MARKER,
        LEASE_FILE,
        VERSION_RECORD,
    }
)


class VersionError(A2FError):
    """A version operation cannot proceed (plain folder in the way, broken record, ...)."""

    status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class ObjectRecord:
    """One source object as it was downloaded: where from and how to tell if it changed."""

    path: str  # relative to the model folder, "/"-separated
    key: str  # the full source key
    size: int
    etag: str
    version_id: str | None = None
    checksum: dict[str, str] = field(default_factory=dict)  # e.g. {"SHA256": "<base64>"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectRecord:
        return cls(
            path=str(d["path"]),
            key=str(d["key"]),
            size=int(d["size"]),
            etag=str(d["etag"]),
            version_id=d.get("version_id"),
            checksum=dict(d.get("checksum") or {}),
        )


@dataclass(frozen=True)
class VersionRecord:
    """``.a2f-version.json`` of a version directory."""

    version_id: str
    model: str
    source: str
    published_at: float  # seconds since the epoch
    objects: tuple[ObjectRecord, ...] = ()
    schema: int = RECORD_SCHEMA

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        d["published_at_iso"] = datetime.fromtimestamp(self.published_at, UTC).isoformat()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionRecord:
        return cls(
            version_id=str(d["version_id"]),
            model=str(d["model"]),
            source=str(d["source"]),
            published_at=float(d["published_at"]),
            objects=tuple(ObjectRecord.from_dict(o) for o in d.get("objects", [])),
            schema=int(d.get("schema", RECORD_SCHEMA)),
        )

    def by_path(self) -> dict[str, ObjectRecord]:
        return {o.path: o for o in self.objects}


def read_record(version_dir: str | os.PathLike[str]) -> VersionRecord | None:
    """The version record of a directory (or a symlinked folder); None if it has none."""
    path = Path(version_dir) / VERSION_RECORD
    try:
        with open(path, encoding="utf-8") as f:
            return VersionRecord.from_json(json.load(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise VersionError(f"{path}: unreadable version record ({err}); expected JSON "
                           "written by a2f-model-sync") from err


def write_record(version_dir: str | os.PathLike[str], record: VersionRecord) -> None:
    atomic_write_json(Path(version_dir) / VERSION_RECORD, record.to_json())


def new_version_id(objects: Iterable[ObjectRecord], now: float | None = None) -> str:
    """``<UTC time>-<8 hex of the object set>``: sortable by time, unique by content."""
    h = hashlib.sha256()
    for o in sorted(objects, key=lambda o: o.path):
        h.update(f"{o.path}\0{o.size}\0{o.etag}\0{o.version_id}\n".encode())
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"{stamp:%Y%m%dT%H%M%S}Z-{h.hexdigest()[:8]}-{secrets.token_hex(2)}"


def is_foreign_file(rel_path: str) -> bool:
    """True for files other services write into a model folder (engines, records, markers)."""
    name = rel_path.rsplit("/", 1)[-1]
    return name in _FOREIGN_NAMES or is_temp_name(name)


def is_managed(folder: str | os.PathLike[str]) -> bool:
    """True if ``folder`` is a symlink into the volume's versions store."""
    p = Path(folder)
    if not p.is_symlink():
        return False
    target = os.readlink(p)
    return not os.path.isabs(target) and target.startswith(os.path.join(".a2f", "versions", ""))


def version_dir_of(folder: str | os.PathLike[str]) -> Path | None:
    """The version directory a managed folder points to now (None for a plain folder)."""
    p = Path(folder)
    if not is_managed(p):
        return None
    return p.parent / os.readlink(p)


def _walk_files(top: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, stat) of regular files below ``top``; symlinks are not followed."""
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        st = e.stat(follow_symlinks=False)
                        yield Path(e.path).relative_to(top).as_posix(), st


def current_version(folder: str | os.PathLike[str]) -> str:
    """A stable id of what the model folder holds now.

    Managed folder: the version record's id. Plain folder: ``local-<16 hex>`` derived from the
    relative names, sizes and mtimes of its model files (engines, records, markers, hidden and
    temporary files excluded), so an engine build does not change it but replacing a model
    file does. Raises :class:`VersionError` if the folder does not exist.
    """
    p = Path(folder)
    if not p.exists():
        raise VersionError(f"model folder {p} does not exist")
    record = read_record(p)
    if record is not None:
        return record.version_id
    h = hashlib.sha256()
    for rel, st in sorted(_walk_files(p.resolve())):
        if is_foreign_file(rel) or any(part.startswith(".") for part in rel.split("/")):
            continue
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"local-{h.hexdigest()[:16]}"


# --------------------------------------------------------------------------------------------
# Leases


@contextlib.contextmanager
def pin(folder: str | os.PathLike[str], timeout_s: float = 30.0) -> Iterator[Path]:
    """Hold a shared lease on the version a model folder points to; yield its real directory.

    Read every file through the yielded path: they all come from one version, which GC does
    not remove while the lease is held. A plain (unmanaged) folder is yielded as is, without a
    lease (the sync never touches it).
    """
    p = Path(folder)
    deadline = time.monotonic() + timeout_s
    while True:
        vdir = version_dir_of(p)
        if vdir is None:
            if not p.is_dir():
                raise VersionError(f"model folder {p} does not exist")
            yield p
            return
        lease = vdir / LEASE_FILE
        try:
            fd = open_lease(lease)
        except (FileNotFoundError, NotADirectoryError):
            fd = -1  # removed by GC between resolve and open: resolve again
        except OSError as err:  # no lease file and no write access to create one
            warn_unleased(vdir, err)
            yield vdir.resolve()
            return
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                # Still the file at that path (GC renames before deleting)?
                st, st_path = os.fstat(fd), os.stat(lease)
                same = (st.st_dev, st.st_ino) == (st_path.st_dev, st_path.st_ino)
            except FileNotFoundError:
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                try:
                    yield vdir.resolve()
                finally:
                    os.close(fd)
                return
            os.close(fd)
        if time.monotonic() > deadline:
            raise VersionError(f"could not pin a version of {p} within {timeout_s:.0f} s")
        time.sleep(0.01)


def is_leased(version_dir: str | os.PathLike[str]) -> bool:
    """True if someone holds a lease on the version directory right now."""
    try:
        fd = os.open(Path(version_dir) / LEASE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# --------------------------------------------------------------------------------------------
# Switch, adopt, carry over


def switch(models_root: str | os.PathLike[str], model: str, version_id: str) -> None:
    """Point ``<root>/<model>`` at ``.a2f/versions/<model>/<version_id>`` atomically.

    Refuses (VersionError) to replace a plain directory or file: see :func:`adopt`.
    """
    root = Path(models_root)
    folder = root / model
    target_dir = versions_dir(root, model) / version_id
    if not target_dir.is_dir():
        raise VersionError(f"version directory {target_dir} does not exist")
    if (folder.exists() or folder.is_symlink()) and not is_managed(folder):
        raise VersionError(
            f"{folder} is a plain directory not managed by a2f-model-sync; refusing to replace "
            "it (remove it, or pass --adopt to move it into the versions store)"
        )
    rel = os.path.relpath(target_dir, root)
    tmp = root / temp_name(model)
    os.symlink(rel, tmp)
    try:
        os.replace(tmp, folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(root)


def unpublish(models_root: str | os.PathLike[str], model: str) -> bool:
    """Remove the managed symlink of a model (its versions are left to GC). False if plain."""
    folder = Path(models_root) / model
    if not is_managed(folder):
        return False
    os.unlink(folder)
    fsync_dir(Path(models_root))
    return True


def link_new_file(src: Path, dest: Path) -> None:
    """Create ``dest`` as a hardlink of ``src`` (same inode, no bytes copied), or a copy where
    links fail; an existing ``dest`` is an error (``FileExistsError``), never replaced."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise
        shutil.copy2(src, dest)


def carry_over(old_dir: Path, new_dir: Path, source_paths: set[str]) -> list[str]:
    """Link files other services wrote into ``old_dir`` (anything not a source object) into
    ``new_dir``, where not already present. Returns the relative paths carried."""
    carried = []
    for rel, _st in _walk_files(old_dir):
        if rel in source_paths or rel in (LEASE_FILE, VERSION_RECORD) or is_temp_name(rel):
            continue
        dest = new_dir / rel
        if dest.exists():
            continue
        try:
            link_new_file(old_dir / rel, dest)
            carried.append(rel)
        except FileExistsError:
            pass
        except FileNotFoundError:
            pass  # removed meanwhile
    return carried


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err), str(a))
    return True


def adopt(models_root: str | os.PathLike[str], model: str, source: str = "adopted") -> str:
    """Move a plain model directory into the versions store and manage it; return the id.

    The files are hardlinked into a new version directory, then the directory and a symlink to
    that version are swapped atomically (``renameat2(RENAME_EXCHANGE)``; a plain rename plus
    symlink where unsupported), and the old directory entry is removed.
    """
    root = Path(models_root)
    folder = root / model
    if is_managed(folder):
        return current_version(folder)
    if not folder.is_dir():
        raise VersionError(f"{folder} is not a directory; nothing to adopt")
    vid = f"adopted-{current_version(folder)}-{secrets.token_hex(2)}"
    vroot = versions_dir(root, model)
    vroot.mkdir(parents=True, exist_ok=True)
    build = vroot / temp_name(vid)
    build.mkdir()
    for rel, _st in _walk_files(folder):
        link_new_file(folder / rel, build / rel)
    write_record(build, VersionRecord(vid, model, source, time.time()))
    final = vroot / vid
    os.rename(build, final)
    fsync_dir(vroot)
    tmp_link = root / temp_name(model)
    os.symlink(os.path.relpath(final, root), tmp_link)
    if _exchange(tmp_link, folder):
        shutil.rmtree(tmp_link)  # now the old plain directory
    else:
        aside = root / temp_name(model + ".adopted")
        os.rename(folder, aside)
        os.replace(tmp_link, folder)
        shutil.rmtree(aside)
    fsync_dir(root)
    logger.info("adopted plain folder %s as version %s", folder, vid)
    return vid


# --------------------------------------------------------------------------------------------
# Garbage collection


def list_versions(models_root: str | os.PathLike[str], model: str) -> list[tuple[Path, float]]:
    """(directory, published time) of every stored version of a model, oldest first."""
    out = []
    vroot = versions_dir(models_root, model)
    if not vroot.is_dir():
        return []
    for e in vroot.iterdir():
        if e.name.startswith(".") or not e.is_dir():
            continue
        try:
            rec = read_record(e)
        except VersionError:
            rec = None
        published = rec.published_at if rec is not None else e.stat().st_mtime
        out.append((e, published))
    out.sort(key=lambda t: (t[1], t[0].name))
    return out


def _remove_version(vdir: Path) -> bool:
    """Remove a version directory if no lease is held; True if removed."""
    lease = vdir / LEASE_FILE
    try:
        fd = os.open(lease, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        trash = vdir.with_name(f"{_TRASH_MARK}{vdir.name}-{secrets.token_hex(3)}")
        os.rename(vdir, trash)
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def collect_garbage(
    models_root: str | os.PathLike[str],
    model: str,
    keep: int = DEFAULT_KEEP,
    grace_s: float = DEFAULT_GRACE_S,
    now: float | None = None,
) -> list[str]:
    """Remove old versions of a model by the rule in the module docstring; return removed ids.

    A model whose folder no longer exists (removed with ``--delete``) has no current version:
    all its versions are old.
    """
    now = time.time() if now is None else now
    root = Path(models_root)
    vroot = versions_dir(root, model)
    for e in list(vroot.iterdir()) if vroot.is_dir() else []:
        if e.name.startswith(_TRASH_MARK) or (is_temp_name(e.name) and e.is_dir()):
            shutil.rmtree(e, ignore_errors=True)  # left by a crash mid-removal or mid-adopt
    current = version_dir_of(root / model)
    current_name = current.name if current is not None else None
    versions = list_versions(root, model)
    removed: list[str] = []
    old: list[tuple[Path, float]] = []  # (dir, superseded at)
    for i, (vdir, _published) in enumerate(versions):
        if vdir.name == current_name:
            continue
        superseded = versions[i + 1][1] if i + 1 < len(versions) else _published
        old.append((vdir, superseded))
    kept_young = 0
    for vdir, superseded in reversed(old):  # newest old version first
        young = now - superseded < grace_s
        if young and kept_young < keep:
            kept_young += 1
            continue
        if _remove_version(vdir):
            removed.append(vdir.name)
            logger.info("removed old version %s of model %s", vdir.name, model)
        else:
            logger.debug("version %s of model %s is leased; kept", vdir.name, model)
    if removed:
        fsync_dir(vroot)
    return removed
