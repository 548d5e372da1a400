"""Lease files of model versions: created by model-sync, opened read-only by readers.

A reader leases a version by holding a shared ``flock`` on ``<version dir>/.a2f-lease``
(:func:`a2f_volume.versions.pin`); model-sync's garbage collection takes an exclusive
non-blocking ``flock`` on the same file and removes only versions it gets. ``flock`` needs no
write access, so a reader can lease through a read-only mount of the volume as long as the file
exists: model-sync creates it in every version before publishing it
(:func:`create_lease_file`) and in older versions at start (:func:`ensure_lease_files`). Both
sides see each other's locks when they run on one kernel (containers of one pod).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from a2f_volume.layout import VERSIONS_DIR, is_temp_name, state_dir

logger = logging.getLogger(__name__)

LEASE_FILE = ".a2f-lease"
_WARNED_UNLEASED: set[str] = set()


def open_lease(lease: Path) -> int:
    """A descriptor of a version's lease file to ``flock``.

    The file is opened read-only when it exists (model-sync creates it with every version, so
    a reader of a read-only mount can lease; ``flock`` needs no write access). Only a missing
    file is created, which needs a writable version directory; ``OSError`` (``EROFS``,
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
        "Run an a2f-model-sync that creates lease files (it adds them to every version at "
        "start), or mount the volume writable", version_dir, LEASE_FILE,
        err.strerror or err)


def create_lease_file(version_dir: str | os.PathLike[str]) -> bool:
    """Create a version's (empty) lease file if missing, readable by every reader; True if
    created. Called by model-sync on each version it publishes, before it is visible."""
    lease = Path(version_dir) / LEASE_FILE
    try:
        fd = os.open(lease, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.fchmod(fd, 0o644)  # whatever the umask: readers in other containers open it
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
            try:
                created += create_lease_file(vdir)
            except FileNotFoundError:
                continue  # removed meanwhile
    if created:
        logger.info("created %d missing lease file(s) under %s", created, store)
    return created
