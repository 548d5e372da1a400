"""Leases: a shared ``flock`` on ``<version dir>/.a2f-lease`` keeps a version readable.

:func:`pin` resolves a model folder to its version directory and holds the lease until the
context exits (or the holder dies: the kernel drops the lock even on ``kill -9``).
:func:`remove_unleased` is the only way a version directory is removed: it takes the lease
exclusively (never waiting), renames the directory to a hidden trash name while holding it,
then deletes it, so a reader that tries to pin it afterwards finds it gone and re-resolves
the folder.

``flock`` needs no write access, so a reader can lease through a read-only mount of the
volume as long as the lease file exists: model-sync creates it in every version before
publishing it (:func:`create_lease_file`) and in older versions at each pass
(:func:`ensure_lease_files`); readers open it read-only (:func:`open_lease`) and create it
only where it is missing and the directory is writable. Readers and GC see each other's locks
when they run on one kernel (containers of one pod).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from a2f_volume.layout import LEASE_FILE, VERSIONS_DIR, is_temp_name, state_dir
from a2f_volume.version_links import version_dir_of
from a2f_volume.version_record import VersionError

logger = logging.getLogger(__name__)

TRASH_MARK = ".trash-"
_WARNED_UNLEASED: set[str] = set()


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


def open_lease(lease: Path) -> int:
    """A descriptor of a version's lease file to ``flock``.

    Opened read-only when the file exists (``flock`` needs no write access). Only a missing
    file is created, which needs a writable version directory: ``OSError`` (``EROFS``,
    ``EACCES``) when that is impossible, ``FileNotFoundError`` when the directory is gone.
    """
    try:
        return os.open(lease, os.O_RDONLY)
    except FileNotFoundError:
        if not lease.parent.is_dir():
            raise
    return os.open(lease, os.O_RDWR | os.O_CREAT, 0o644)


def warn_unleased(version_dir: Path, err: OSError) -> None:
    """Log (once per directory) that a version is read without a lease, and how to fix it."""
    key = str(version_dir)
    if key in _WARNED_UNLEASED:
        return
    _WARNED_UNLEASED.add(key)
    logger.warning(
        "cannot lease version %s: %s is missing and cannot be created (%s); reading it "
        "without a lease, so model-sync's garbage collection may remove it while in use. "
        "Run an a2f-model-sync that creates lease files (it adds them to every version on "
        "each pass), or mount the volume writable", version_dir, LEASE_FILE,
        err.strerror or err)


def create_lease_file(version_dir: str | os.PathLike[str]) -> bool:
    """Create a version's (empty) lease file if missing, readable by every reader; True if
    created. model-sync calls it on each version it publishes, before it is visible."""
    lease = Path(version_dir) / LEASE_FILE
    try:
        fd = os.open(lease, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: readers in other containers open it
    finally:
        os.close(fd)
    return True


def ensure_lease_files(models_root: str | os.PathLike[str]) -> int:
    """Create the lease file of every stored version that lacks one (versions published
    before lease files existed, adopted folders); returns how many were created."""
    store = state_dir(models_root) / VERSIONS_DIR
    created = 0
    for model_dir in sorted(store.iterdir()) if store.is_dir() else []:
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        for vdir in sorted(model_dir.iterdir()):
            if vdir.name.startswith(".") or is_temp_name(vdir.name) or not vdir.is_dir():
                continue
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                created += create_lease_file(vdir)
    if created:
        logger.info("created %d missing lease file(s) under %s", created, store)
    return created


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


def remove_unleased(vdir: Path) -> bool:
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
        trash = vdir.with_name(f"{TRASH_MARK}{vdir.name}-{secrets.token_hex(3)}")
        os.rename(vdir, trash)
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True
