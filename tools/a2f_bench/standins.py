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


#: The A2E folder's name under the benchmark's models root.
A2E_NAME = "a2e"


def a2e_standin(size: str, root: Path = STANDIN_CACHE, seed: int = 0) -> Path:
    """The cached A2E stand-in ``<root>/a2e-<size>-seed<seed>`` (generated once)."""
    from a2f_standin.emotion import generate_emotion

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"a2e-{size}-seed{seed}"
    with FileLock(root / f".{final.name}.lock"):
        if (final / "model.json").is_file():
            return final
        logger.info("generating the %s A2E stand-in into %s", size, final)
        work = root / f".{final.name}.building-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        generate_emotion(work, size=size, seed=seed)
        os.replace(work, final)
    return final


def link_a2e(models_root: Path, size: str) -> Path:
    """``models_root/a2e``: a link to the cached A2E stand-in."""
    target = a2e_standin(size).resolve()
    link = models_root / A2E_NAME
    if not link.exists() or link.resolve() != target:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return link
