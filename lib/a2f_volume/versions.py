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
the lock even on ``kill -9``). Readers that should pin: the engine-builder during a build,
the inference server while it loads a version, and, if it wants, while a stream uses it.

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
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from a2f_volume.layout import LEASE_FILE, VERSION_RECORD, is_temp_name, temp_name, versions_dir
from a2f_volume.leases import TRASH_MARK, is_leased, pin, remove_unleased
from a2f_volume.publish import fsync_dir
from a2f_volume.version_links import is_managed, version_dir_of
from a2f_volume.version_record import (
    RECORD_SCHEMA,
    ObjectRecord,
    VersionError,
    VersionRecord,
    is_foreign_file,
    new_version_id,
    read_record,
    write_record,
)

__all__ = [
    "DEFAULT_GRACE_S", "DEFAULT_KEEP", "LEASE_FILE", "RECORD_SCHEMA", "ObjectRecord",
    "VersionError", "VersionRecord", "adopt", "carry_over", "collect_garbage",
    "current_version", "is_foreign_file", "is_leased", "is_managed", "link_new_file",
    "list_versions", "new_version_id", "pin", "read_record", "switch", "unpublish",
    "version_dir_of", "write_record",
]

logger = logging.getLogger(__name__)

DEFAULT_GRACE_S = 600.0
DEFAULT_KEEP = 2


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
        if e.name.startswith(TRASH_MARK) or (is_temp_name(e.name) and e.is_dir()):
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
        if remove_unleased(vdir):
            removed.append(vdir.name)
            logger.info("removed old version %s of model %s", vdir.name, model)
        else:
            logger.debug("version %s of model %s is leased; kept", vdir.name, model)
    if removed:
        fsync_dir(vroot)
    return removed
