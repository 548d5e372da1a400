"""Watching the model volume for changes, robustly.

inotify (through watchdog) is only a *wake-up signal* here: after any relevant event the
watcher waits for the writes to settle (debounce), then rescans the volume and compares a
cheap signature of every model folder (the real directory behind it and the identity of
each file in it) with the previous scan. A periodic rescan runs as well, which is the
fallback for filesystems where inotify sees nothing (NFS, CIFS, FUSE: writes made by other
hosts) and a safety net for missed events. Temporary names are ignored, so a download or a
build in progress never triggers a reaction; only the atomic rename that publishes a file
does.

The callback receives the set of model names whose signature changed (appeared, changed or
disappeared).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from a2f_volume.layout import STATE_DIR, VERSIONS_DIR, is_model_name, is_temp_name, list_model_dirs
from a2f_volume.scan import warn_unreadable

logger = logging.getLogger(__name__)

Signature = tuple[str, tuple[tuple[str, int, int, int], ...]]

_IGNORED_FILES = frozenset({".a2f-lease"})
# Reads change nothing; reacting to them would let any reader (a hash check, a model load)
# keep the debounce from ever settling.
_READ_ONLY_EVENTS = frozenset({"opened", "closed_no_write"})


def folder_signature(folder: Path) -> Signature | None:
    """(real path, (name, size, mtime_ns, inode) of each published file); None if absent."""
    try:
        real = folder.resolve(strict=True)
        entries = []
        with os.scandir(real) as it:
            for e in it:
                if is_temp_name(e.name) or e.name in _IGNORED_FILES or not e.is_file():
                    continue
                st = e.stat()
                entries.append((e.name, st.st_size, st.st_mtime_ns, st.st_ino))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:  # e.g. a folder this user may not read
        warn_unreadable(folder, err)
        return None
    return (str(real), tuple(sorted(entries)))


def scan_signatures(models_root: str | os.PathLike[str]) -> dict[str, Signature]:
    """Signatures of every model folder under the root."""
    out: dict[str, Signature] = {}
    for folder in list_model_dirs(models_root):
        sig = folder_signature(folder)
        if sig is not None:
            out[folder.name] = sig
    return out


class VolumeWatcher:
    """Calls ``on_change(models)`` when model folders under ``models_root`` change.

    ``poll_interval_s`` is the period of the full rescan (always on); ``use_inotify`` adds
    event-driven wake-ups (disable it, or let it fail over automatically, on network
    filesystems); ``debounce_s`` is how long the volume must be quiet after an event before
    the rescan. ``start()`` performs a first scan synchronously and reports every model
    present as changed, so the owner can treat start-up and changes the same way.
    """

    def __init__(
        self,
        models_root: str | os.PathLike[str],
        on_change: Callable[[set[str]], None],
        *,
        poll_interval_s: float = 5.0,
        debounce_s: float = 0.5,
        use_inotify: bool = True,
    ) -> None:
        self.models_root = Path(models_root)
        self._on_change = on_change
        self._poll_interval_s = poll_interval_s
        self._debounce_s = debounce_s
        self._use_inotify = use_inotify
        self._signatures: dict[str, Signature] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: object | None = None
        self.inotify_active = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._rescan(report_all=True)
        if self._use_inotify:
            self._start_observer()
        self._thread = threading.Thread(target=self._run, name="volume-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        observer = self._observer
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(timeout=5)  # type: ignore[attr-defined]
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def poke(self) -> None:
        """Ask for a rescan now (after the debounce)."""
        self._wake.set()

    # -- internals ---------------------------------------------------------------------
    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            logger.warning("watchdog not importable; relying on polling every %.1fs",
                           self._poll_interval_s)
            return

        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in _READ_ONLY_EVENTS:
                    return
                paths = [os.fsdecode(event.src_path)]
                dest = getattr(event, "dest_path", "")
                if dest:
                    paths.append(os.fsdecode(dest))
                if any(watcher._relevant(p) for p in paths):
                    watcher._wake.set()

        try:
            self.models_root.mkdir(parents=True, exist_ok=True)
            observer = Observer()
            observer.schedule(_Handler(), str(self.models_root), recursive=True)
            observer.start()
        except OSError as err:
            logger.warning("inotify unavailable on %s (%s); polling every %.1fs instead",
                           self.models_root, err, self._poll_interval_s)
            return
        self._observer = observer
        self.inotify_active = True

    def _relevant(self, path: str) -> bool:
        try:
            rel = Path(path).relative_to(self.models_root)
        except ValueError:
            return False
        parts = rel.parts
        if not parts or is_temp_name(parts[-1]) or parts[-1] in _IGNORED_FILES:
            return False
        if parts[0] == STATE_DIR:
            return len(parts) >= 3 and parts[1] == VERSIONS_DIR
        return is_model_name(parts[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll_interval_s)
            if self._stop.is_set():
                return
            if self._wake.is_set():
                # Debounce: wait until no event arrived for debounce_s, but never longer than
                # one rescan period (a volume that never goes quiet is still rescanned).
                settle_by = time.monotonic() + max(self._poll_interval_s, self._debounce_s)
                while True:
                    self._wake.clear()
                    if self._stop.wait(self._debounce_s):
                        return
                    if not self._wake.is_set() or time.monotonic() >= settle_by:
                        break
            try:
                self._rescan(report_all=False)
            except Exception:  # keep watching whatever one scan hit
                logger.exception("rescan of %s failed", self.models_root)

    def _rescan(self, report_all: bool) -> None:
        current = scan_signatures(self.models_root)
        if report_all:
            changed = set(current)
        else:
            changed = {m for m in current.keys() | self._signatures.keys()
                       if current.get(m) != self._signatures.get(m)}
        self._signatures = current
        if changed:
            logger.debug("volume change in %s", sorted(changed))
            self._on_change(changed)
