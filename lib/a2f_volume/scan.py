"""Listing directories of the shared volume without failing on entries we cannot read.

A models root is often the top of a filesystem: a fresh ext4 volume has a root-owned
``lost+found`` (mode 0700), and operators leave other files there. Every scan of the root (or
of the versions store) goes through :func:`list_dir` and :func:`warn_unreadable`: an entry that
cannot be read is skipped with one warning per entry for the life of the process, and the
scan goes on with the others. Nothing here raises for a permission problem.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_unreadable(path: str | os.PathLike[str], err: OSError) -> None:
    """Log once per path that it is skipped because it cannot be read."""
    key = os.fspath(path)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("skipping %s: cannot read it (%s); it is not a model folder this "
                   "service can use (check its owner and mode if it should be one)",
                   key, err.strerror or err)


def list_dir(directory: str | os.PathLike[str]) -> list[Path]:
    """The entries of ``directory``, sorted by name; [] if it is missing or unreadable."""
    try:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []
    except OSError as err:
        warn_unreadable(directory, err)
        return []
    return [Path(directory) / n for n in names]
