"""Cached stand-in model folders for the benchmarks (generated once, published by rename)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from a2f_standin import GENERATOR_VERSION, generate
from a2f_volume.lock import FileLock

logger = logging.getLogger(__name__)

#: Where generated stand-ins are cached (same layout as the test fixtures' cache).
STANDIN_CACHE = Path(".a2f-local") / "standins"

#: The folder name each stand-in kind is served under (as in the seed's deployment).
MODEL_NAMES = {"regression": "a23", "diffusion": "multi-diffusion"}


def standin_folder(kind: str, size: str, root: Path = STANDIN_CACHE, seed: int = 0) -> Path:
    """The cached stand-in ``<root>/<kind>-<size>-seed<seed>``, generated when missing or
    made by another generator version (under a lock; published by rename)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{kind}-{size}-seed{seed}"
    stamp = f"{GENERATOR_VERSION}\n"
    with FileLock(root / f".{final.name}.lock"):
        marker = final / ".standin-version"
        if marker.is_file() and marker.read_text() == stamp:
            return final
        logger.info("generating the %s %s stand-in into %s", size, kind, final)
        work = root / f".{final.name}.building-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        generate(kind, work, size=size, seed=seed)
        (work / ".standin-version").write_text(stamp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    return final


def linked_standin(kind: str, size: str, models_root: Path) -> Path:
    """``models_root/<model name>``: a link to the cached stand-in (made once)."""
    target = standin_folder(kind, size).resolve()
    models_root.mkdir(parents=True, exist_ok=True)
    link = models_root / MODEL_NAMES[kind]
    if not link.exists() or link.resolve() != target:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return link
