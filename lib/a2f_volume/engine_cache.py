"""Garbage collection of the content-addressed engine cache ``.a2f/engines/``.

Every engine the builder makes lands in ``.a2f/engines/<onnx-sha>-<target-fp>.<ext>`` (with
its record ``<same>.<ext>.json``) and is hardlinked (or copied) into the version directory.
A cached engine is **referenced** when a model folder or a stored version directory holds an
engine record naming the same ONNX hash and target fingerprint, or an engine file that is the
same inode. Collection keeps every referenced engine and the ``keep_unreferenced`` most
recently used unreferenced ones (a rollback to a recent ONNX then costs no rebuild), and
removes the rest with their records.

An engine is never removed while it is in use: builders hold the cache lock shared
(:func:`using_cache`) from the cache lookup until the engine is linked into its version, and
collection takes it exclusively without waiting (a busy cache is collected next time).
Engines already linked into a version are separate directory entries, so removing the cache
entry never affects a folder that serves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from a2f_volume.layout import (
    ENGINE_RECORD_SUFFIX,
    ORT_ENGINE_NAME,
    TRT_ENGINE_NAME,
    engines_dir,
    is_temp_name,
    locks_dir,
    model_entries,
    state_dir,
)
from a2f_volume.lock import FileLock

logger = logging.getLogger(__name__)

DEFAULT_KEEP_UNREFERENCED = 1
ENGINE_CACHE_LOCK = "engine-cache.lock"
_ENGINE_NAMES = (TRT_ENGINE_NAME, ORT_ENGINE_NAME)


def _cache_lock(models_root: str | os.PathLike[str], shared: bool) -> FileLock:
    return FileLock(locks_dir(models_root) / ENGINE_CACHE_LOCK, shared=shared)


@contextlib.contextmanager
def using_cache(models_root: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the cache lock shared: no cached engine is collected until the block exits."""
    lock = _cache_lock(models_root, shared=True)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class CacheCollection:
    """What one collection did."""

    removed: tuple[str, ...] = ()
    freed_bytes: int = 0
    kept_referenced: int = 0
    kept_unreferenced: int = 0
    busy: bool = False  # a builder was using the cache: nothing was examined


def _version_dirs(models_root: Path) -> Iterator[Path]:
    """Every directory that may hold an engine: model folders and stored versions."""
    yield from model_entries(models_root)
    vroot = state_dir(models_root) / "versions"
    for model in model_entries(vroot):
        yield from model_entries(model)


def _references(models_root: Path) -> tuple[set[str], set[tuple[int, int]]]:
    """(cache stems ``<onnx-sha>-<target-fp>`` named by engine records, engine inodes)."""
    stems: set[str] = set()
    inodes: set[tuple[int, int]] = set()
    for folder in _version_dirs(models_root):
        for name in _ENGINE_NAMES:
            with contextlib.suppress(OSError):
                st = os.stat(folder / name)
                inodes.add((st.st_dev, st.st_ino))
            try:
                with open(folder / (name + ENGINE_RECORD_SUFFIX), encoding="utf-8") as f:
                    doc = json.load(f)
                stems.add(f"{doc['onnx_sha256']}-{doc['target_fingerprint']}")
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return stems, inodes


def collect_cached_engines(models_root: str | os.PathLike[str],
                           keep_unreferenced: int = DEFAULT_KEEP_UNREFERENCED
                           ) -> CacheCollection:
    """Remove unreferenced cached engines beyond the newest ``keep_unreferenced``."""
    root = Path(models_root)
    cache = engines_dir(root)
    if not cache.is_dir():
        return CacheCollection()
    lock = _cache_lock(root, shared=False)
    if not lock.acquire(blocking=False):
        logger.debug("engine cache in use by a builder; collected next time")
        return CacheCollection(busy=True)
    try:
        stems, inodes = _references(root)
        unreferenced: list[tuple[float, Path, os.stat_result]] = []
        referenced = 0
        for entry in cache.iterdir():
            name = entry.name
            if is_temp_name(name) or name.endswith(ENGINE_RECORD_SUFFIX) or "-" not in name:
                continue  # temps are swept by the builder; records go with their engine
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.stem in stems or (st.st_dev, st.st_ino) in inodes:
                referenced += 1
                continue
            unreferenced.append((max(st.st_mtime, st.st_ctime), entry, st))
        unreferenced.sort(key=lambda t: t[0], reverse=True)  # most recently written or linked
        removed: list[str] = []
        freed = 0
        for _mtime, entry, st in unreferenced[keep_unreferenced:]:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                freed += st.st_size if st.st_nlink <= 1 else 0
                removed.append(entry.name)
            with contextlib.suppress(FileNotFoundError):
                entry.with_name(entry.name + ENGINE_RECORD_SUFFIX).unlink()
            logger.info("removed cached engine %s (no version uses it)", entry)
        return CacheCollection(tuple(removed), freed, referenced,
                               min(len(unreferenced), keep_unreferenced))
    finally:
        lock.release()
