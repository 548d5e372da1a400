"""Managed model folders: ``<root>/<model>`` as a relative symlink into the versions store."""

from __future__ import annotations

import os
from pathlib import Path


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
