"""What every pass does after publishing, whatever publishing did: mirror removals of models
gone from the source, collect old versions and unused cached engines; and the volume's free
space."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

from a2f_volume import versions
from a2f_volume.engine_cache import collect_cached_engines
from a2f_volume.errors import A2FError
from a2f_volume.layout import VERSIONS_DIR, is_model_name, model_entries, state_dir
from a2f_volume.scan import list_dir

logger = logging.getLogger(__name__)


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def mirror_removals(root: Path, source_models: set[str], delete: bool,
                    source_url: str) -> tuple[list[str], list[str]]:
    """Unpublish managed models gone from the source when ``delete``; (removed, kept)."""
    removed: list[str] = []
    kept: list[str] = []
    for entry in list_dir(root):
        name = entry.name
        if not is_model_name(name) or name in source_models:
            continue
        if not versions.is_managed(entry):
            continue  # a plain folder is never touched
        if delete:
            versions.unpublish(root, name)
            removed.append(name)
            logger.info("model %s is gone from %s: removed (--delete)", name, source_url)
        else:
            kept.append(name)
            logger.info("model %s is gone from %s: kept (pass --delete to mirror removals)",
                        name, source_url)
    return removed, kept


def collect_garbage(root: Path, keep_versions: int, grace_s: float, engine_keep: int) -> None:
    """Old versions of every model (each on its own: one failure stops no other), then
    cached engines no version uses beyond ``engine_keep``."""
    vroot = state_dir(root) / VERSIONS_DIR
    for entry in model_entries(vroot):
        try:
            versions.collect_garbage(root, entry.name, keep=keep_versions, grace_s=grace_s)
        except (OSError, A2FError) as err:
            logger.warning("garbage collection of %s failed: %s", entry.name, err)
        with contextlib.suppress(OSError):
            if not any(entry.iterdir()) and not (root / entry.name).is_symlink():
                entry.rmdir()
    try:
        collect_cached_engines(root, engine_keep)
    except OSError as err:
        logger.warning("garbage collection of the engine cache failed: %s", err)
