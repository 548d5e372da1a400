"""Content fingerprints: SHA-256 of file bytes, cached by file identity.

Engines are keyed by the exact ONNX bytes, never by mtime or size (a retrained network of the
same architecture has the same size; a copy can carry an older mtime). Hashing a large file
at every start is wasteful, so results are cached by identity: (device, inode, size,
mtime_ns, ctime_ns). ``ctime`` cannot be set from user space, so rewriting a file and then
forging its mtime still invalidates the entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from a2f_volume.publish import atomic_write_json

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path: str | os.PathLike[str]) -> str:
    """A string that changes whenever the file's bytes may have changed."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


class HashCache:
    """SHA-256 per path, remembered by file identity, optionally persisted to a JSON file.

    Thread-safe. A persisted cache survives restarts, which makes a restart with nothing to
    do near-instant even with multi-GB ONNX files on the volume.
    """

    def __init__(self, store: str | os.PathLike[str] | None = None) -> None:
        self._store = Path(store) if store is not None else None
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, str]] = {}
        self._dirty = False
        if self._store is not None and self._store.is_file():
            try:
                raw = json.loads(self._store.read_text(encoding="utf-8"))
                self._entries = {k: (v[0], v[1]) for k, v in raw.items()}
            except (OSError, ValueError, TypeError, IndexError) as err:
                logger.warning("ignoring unreadable hash cache %s: %s", self._store, err)

    def sha256(self, path: str | os.PathLike[str]) -> str:
        key = os.path.realpath(path)
        ident = file_identity(key)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == ident:
                return hit[1]
        digest = sha256_file(key)
        # The file may have changed while it was read: only cache a stable identity.
        if file_identity(key) == ident:
            with self._lock:
                self._entries[key] = (ident, digest)
                self._dirty = True
        return digest

    def save(self) -> None:
        """Persist the cache (atomically) if it changed; entries of vanished files are dropped."""
        if self._store is None:
            return
        with self._lock:
            if not self._dirty:
                return
            live = {k: list(v) for k, v in self._entries.items() if os.path.exists(k)}
            self._dirty = False
        with contextlib.suppress(OSError):
            self._store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self._store, live)
