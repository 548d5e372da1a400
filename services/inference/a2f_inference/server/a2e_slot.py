"""The server's Audio2Emotion slot: which A2E version new streams use, and the old ones draining.

One A2E model serves every stream of every face model: the one named by ``a2e_model``
(``--a2e-model`` / ``A2F_INFERENCE_A2E_MODEL``), else the only A2E folder under the models
root. Like face models, a stream holds the version it started with to its end
(:meth:`A2ESlot.acquire` / :meth:`A2ESlot.release`); a hot reload installs a new version for
new streams while the previous one drains and is closed with its last stream. Without an
A2E model, :meth:`A2ESlot.acquire` returns None and streams interpolate client keyframes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from a2f_inference.server.a2e_model import LoadedEmotion
from a2f_volume import layout
from a2f_volume.errors import A2FError
from a2f_volume.model_kind import model_family

log = logging.getLogger(__name__)


class A2ENotSelectedError(A2FError):
    """An A2E folder that is not the server's A2E model."""

    status = "FAILED_PRECONDITION"


def a2e_folders(models_root: Path) -> list[str]:
    """Names of the A2E folders under ``models_root``."""
    return [d.name for d in layout.list_model_dirs(models_root)
            if model_family(d) == "emotion"]


class A2ESlot:
    """Thread-safe: the A2E version taking new streams, those draining, the last failure."""

    def __init__(self, models_root: Path, configured: str = "") -> None:
        self.models_root = Path(models_root)
        self.configured = configured
        self._lock = threading.Lock()
        self.serving: LoadedEmotion | None = None
        self.draining: list[LoadedEmotion] = []
        self.failed: dict[str, str] = {}

    def check_selected(self, name: str) -> None:
        """Raise :class:`A2ENotSelectedError` unless ``name`` is the A2E model to serve."""
        if self.configured:
            if name != self.configured:
                raise A2ENotSelectedError(
                    f"Audio2Emotion folder {name!r} is not used: a2e_model names "
                    f"{self.configured!r} (--a2e-model / A2F_INFERENCE_A2E_MODEL)")
            return
        found = a2e_folders(self.models_root)
        if len(found) > 1:
            raise A2ENotSelectedError(
                f"Audio2Emotion folder {name!r} is not used: the models root holds several "
                f"({', '.join(sorted(found))}); name the one to use with --a2e-model / "
                "A2F_INFERENCE_A2E_MODEL")

    def holds(self, name: str) -> bool:
        """Whether ``name`` is (or was) this slot's model."""
        with self._lock:
            return ((self.serving is not None and self.serving.name == name)
                    or any(d.name == name for d in self.draining) or name in self.failed)

    def install(self, le: LoadedEmotion) -> LoadedEmotion | None:
        """``le`` takes new streams; the previous version to close now, if idle."""
        with self._lock:
            old, self.serving = self.serving, le
            self.failed.pop(le.name, None)
            if old is None or old is le:
                return None
            old.retired = True
            if old.open_streams == 0:
                return old
            self.draining.append(old)
            return None

    def retire(self, name: str) -> tuple[bool, LoadedEmotion | None]:
        """No new streams on ``name``: (whether it was served, the version to close now)."""
        with self._lock:
            self.failed.pop(name, None)
            le = self.serving
            if le is None or le.name != name:
                return False, None
            self.serving = None
            le.retired = True
            if le.open_streams == 0:
                return True, le
            self.draining.append(le)
            return True, None

    def record_failure(self, name: str, message: str) -> None:
        with self._lock:
            if self.serving is None or self.serving.name != name:
                self.failed[name] = message

    def serving_key(self, name: str) -> tuple[str, str] | None:
        with self._lock:
            le = self.serving
            return None if le is None or le.name != name else (le.version, le.fingerprint)

    def resident_versions(self, name: str) -> int:
        with self._lock:
            serving = int(self.serving is not None and self.serving.name == name)
            return serving + sum(d.name == name for d in self.draining)

    def snapshot(self) -> list[tuple[str, str, LoadedEmotion | None, list[LoadedEmotion],
                                     str]]:
        """Per A2E name: (name, state, serving version, draining versions, error)."""
        with self._lock:
            names = {m.name for m in ([self.serving] if self.serving else []) + self.draining}
            out = []
            for n in sorted(names | set(self.failed)):
                s = self.serving if self.serving is not None and self.serving.name == n else None
                d = [m for m in self.draining if m.name == n]
                state = "serving" if s else ("failed" if n in self.failed else "draining")
                out.append((n, state, s, d, self.failed.get(n, "")))
            return out

    # -- streams -------------------------------------------------------------------------
    def acquire(self) -> LoadedEmotion | None:
        """The version a new stream uses (held until :meth:`release`), or None."""
        with self._lock:
            le = self.serving
            if le is not None:
                le.open_streams += 1
            return le

    def release(self, le: LoadedEmotion) -> bool:
        """A stream on ``le`` ended; True when ``le`` is now to be closed."""
        with self._lock:
            le.open_streams -= 1
            done = le.retired and le.open_streams == 0
            if done and le in self.draining:
                self.draining.remove(le)
            return done

    def take_all(self) -> list[LoadedEmotion]:
        """Every resident version (the server is closing)."""
        with self._lock:
            out = ([self.serving] if self.serving is not None else []) + self.draining
            self.serving = None
            self.draining = []
            return out
