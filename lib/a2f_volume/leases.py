"""Leases: a shared ``flock`` on ``<version dir>/.a2f-lease`` keeps a version readable.

:func:`pin` resolves a model folder to its version directory and holds the lease until the
context exits (or the holder dies: the kernel drops the lock even on ``kill -9``).
:func:`remove_unleased` is the only way a version directory is removed: it takes the lease
exclusively (never waiting), renames the directory to a hidden trash name while holding it,
then deletes it, so a reader that tries to pin it afterwards finds it gone and re-resolves
the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from a2f_volume.layout import LEASE_FILE
from a2f_volume.version_links import version_dir_of
from a2f_volume.version_record import VersionError

TRASH_MARK = ".trash-"


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
            fd = os.open(lease, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileNotFoundError, NotADirectoryError):
            fd = -1  # removed by GC between resolve and open: resolve again
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
