"""Which keys of a source listing are model files, and which are skipped with a warning.

A key ``<prefix><model>/<path>`` is a file of model ``<model>``. Silently not model files:
folder markers, objects directly under the prefix, hidden or temporary model names, paths
with empty, ``.`` or ``..`` parts, temporary file names. Skipped with one warning per key (and
one count in ``a2f_model_sync_skipped_objects_total{reason}``), never downloaded:

- ``reserved_name``: the volume's own files at a model's top level (``.a2f-version.json``, the
  lease file): publishing them would overwrite the version record;
- ``engine_output``: files the engine-builder writes at a model's top level (``network.trt``,
  ``network.ort``, their ``.json`` records, ``.gpu_arch``): the builder replaces them, so the
  next listing would differ again and the model would be republished on every pass;
- ``bad_key``: a key that cannot be a file name (a control character such as NUL, a path
  part longer than 255 bytes).

One skipped key never blocks its model or another model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Literal

from a2f_model_sync.source import SourceObject
from a2f_volume.layout import (
    ENGINE_RECORD_SUFFIX,
    GPU_ARCH_MARKER,
    LEASE_FILE,
    ORT_ENGINE_NAME,
    TRT_ENGINE_NAME,
    VERSION_RECORD,
    is_model_name,
    is_temp_name,
)

logger = logging.getLogger(__name__)

SkipReason = Literal["reserved_name", "engine_output", "bad_key"]
SKIP_REASONS: tuple[SkipReason, ...] = ("reserved_name", "engine_output", "bad_key")

RESERVED_NAMES = frozenset({VERSION_RECORD, LEASE_FILE})
ENGINE_OUTPUT_NAMES = frozenset({
    TRT_ENGINE_NAME, ORT_ENGINE_NAME, TRT_ENGINE_NAME + ENGINE_RECORD_SUFFIX,
    ORT_ENGINE_NAME + ENGINE_RECORD_SUFFIX, GPU_ARCH_MARKER,
})
_MAX_NAME_BYTES = 255


def _bad_key_reason(rel: str) -> str | None:
    for ch in rel:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"control character {ord(ch):#04x} in the name"
    for part in rel.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
            return f"a path part longer than {_MAX_NAME_BYTES} bytes"
    return None


def split_key(key: str, prefix: str) -> tuple[str, str] | None:
    """(model, relative path) of a key under ``prefix``; None for keys that are not model
    files. Does not apply the skip rules of :class:`KeyFilter`."""
    rest = key[len(prefix):]
    if not rest or rest.endswith("/") or "/" not in rest:
        return None  # folder marker, or an object directly under the prefix
    model, rel = rest.split("/", 1)
    parts = rel.split("/")
    if not is_model_name(model) or any(p in ("", ".", "..") for p in parts):
        return None
    if is_temp_name(parts[-1]):
        return None
    return model, rel


class KeyFilter:
    """Applies the rules above; warns once per skipped key for the life of the process."""

    def __init__(self) -> None:
        self.on_skip: Callable[[SkipReason], None] = lambda reason: None
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def split(self, key: str, prefix: str, where: str) -> tuple[str, str] | None:
        """(model, path) of a model file, or None (skipped keys are reported once)."""
        bad = _bad_key_reason(key[len(prefix):])
        if bad is not None:
            self._skip(key, "bad_key", f"{bad}; not a valid file name", where)
            return None
        found = split_key(key, prefix)
        if found is None:
            return None
        _model, rel = found
        if rel in RESERVED_NAMES:
            self._skip(key, "reserved_name", "the volume's own file name; it would replace "
                       "the version record", where)
            return None
        if rel in ENGINE_OUTPUT_NAMES:
            self._skip(key, "engine_output", "a file the engine-builder writes into the "
                       "model folder; publish the ONNX and let the builder make it", where)
            return None
        return found

    def _skip(self, key: str, reason: SkipReason, why: str, where: str) -> None:
        with self._lock:
            first = key not in self._warned
            self._warned.add(key)
        if first:
            logger.warning("skipping source object %s%r (%s): %s; the other objects and "
                           "models are synced", where, key, reason, why)
            self.on_skip(reason)


def group_by_model(objects: list[SourceObject]) -> dict[str, dict[str, SourceObject]]:
    out: dict[str, dict[str, SourceObject]] = {}
    for o in objects:
        out.setdefault(o.model, {})[o.path] = o
    return out
