"""What every model source is: the :class:`Source` protocol, its objects and its errors.

A source lists every object under its prefix in one pass and downloads single objects into a
given file. Each top-level folder under the prefix is a model (see :mod:`.listing` for which
keys count). Implementations: :mod:`.s3_source` (S3 and compatible servers) and
:mod:`.file_source` (a local directory, for development and tests); :func:`.connect.open_source`
picks one by URL scheme.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from a2f_volume.errors import A2FError

READ_CHUNK_BYTES = 1 << 20
MAX_CHANGE_RETRIES = 3  # downloads restarted because the object changed, then given up


class SourceError(A2FError):
    """The source cannot be listed or read; ``kind`` is the metrics label of the cause."""

    status = "UNAVAILABLE"

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ObjectChanged(Exception):
    """The object was replaced on the source while it was being downloaded, or (``truncated``)
    a response body ended before its announced length."""

    def __init__(self, truncated: bool = False) -> None:
        super().__init__("truncated" if truncated else "changed")
        self.truncated = truncated


class Interrupted(Exception):
    """The download was stopped (SIGTERM)."""


@dataclass(frozen=True)
class SourceObject:
    """One object of the listing."""

    key: str
    model: str
    path: str  # relative to the model folder
    size: int
    etag: str
    checksum_algorithms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Downloaded:
    """What was actually downloaded: the identity to record in the version record."""

    etag: str
    size: int
    version_id: str | None
    checksum: dict[str, str] = field(default_factory=dict)
    restarts: int = 0


class StopFlag:
    """Set by SIGTERM (the parent, shared by everything) or by a failed sibling download."""

    def __init__(self, parent: threading.Event | None = None) -> None:
        self._parent = parent
        self._own = threading.Event()

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or (self._parent is not None and self._parent.is_set())


@dataclass
class TransferOptions:
    chunk_bytes: int = 8 << 20
    max_concurrency: int = 10
    max_bytes_per_s: int = 0
    progress: Callable[[int], None] = lambda n: None
    stop: StopFlag = field(default_factory=StopFlag)


class Source(Protocol):
    url: str

    def describe(self) -> str: ...

    def list_objects(self) -> list[SourceObject]: ...

    def download(self, obj: SourceObject, dest: Path, opts: TransferOptions) -> Downloaded: ...

    def close(self) -> None: ...

