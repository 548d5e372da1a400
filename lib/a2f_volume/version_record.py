"""The version record ``.a2f-version.json``: what a published version holds and where from.

Written by model-sync into every version directory it publishes (atomically, last, before
the directory becomes visible); read by every service to name "what is in this folder now"
and by model-sync to plan the next pass (see ``a2f_model_sync.manifest``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from a2f_volume.errors import A2FError
from a2f_volume.layout import (
    ENGINE_RECORD_SUFFIX,
    GPU_ARCH_MARKER,
    LEASE_FILE,
    ORT_ENGINE_NAME,
    TRT_ENGINE_NAME,
    VERSION_RECORD,
    is_temp_name,
)
from a2f_volume.publish import atomic_write_json

RECORD_SCHEMA = 1

# Files written into a model folder by services other than the sync: never S3 objects of the
# model, never part of a plain folder's model-file id.
_FOREIGN_NAMES = frozenset(
    {
        TRT_ENGINE_NAME,
        ORT_ENGINE_NAME,
        TRT_ENGINE_NAME + ENGINE_RECORD_SUFFIX,
        ORT_ENGINE_NAME + ENGINE_RECORD_SUFFIX,
        GPU_ARCH_MARKER,
        LEASE_FILE,
        VERSION_RECORD,
    }
)


def is_foreign_file(rel_path: str) -> bool:
    """True for files other services write into a model folder (engines, records, markers)."""
    name = rel_path.rsplit("/", 1)[-1]
    return name in _FOREIGN_NAMES or is_temp_name(name)


class VersionError(A2FError):
    """A version operation cannot proceed (plain folder in the way, broken record, ...)."""

    status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class ObjectRecord:
    """One source object as it was downloaded: where from and how to tell if it changed."""

    path: str  # relative to the model folder, "/"-separated
    key: str  # the full source key
    size: int
    etag: str
    version_id: str | None = None
    checksum: dict[str, str] = field(default_factory=dict)  # e.g. {"SHA256": "<base64>"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectRecord:
        return cls(
            path=str(d["path"]),
            key=str(d["key"]),
            size=int(d["size"]),
            etag=str(d["etag"]),
            version_id=d.get("version_id"),
            checksum=dict(d.get("checksum") or {}),
        )


@dataclass(frozen=True)
class VersionRecord:
    """``.a2f-version.json`` of a version directory."""

    version_id: str
    model: str
    source: str
    published_at: float  # seconds since the epoch
    objects: tuple[ObjectRecord, ...] = ()
    schema: int = RECORD_SCHEMA

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        d["published_at_iso"] = datetime.fromtimestamp(self.published_at, UTC).isoformat()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionRecord:
        return cls(
            version_id=str(d["version_id"]),
            model=str(d["model"]),
            source=str(d["source"]),
            published_at=float(d["published_at"]),
            objects=tuple(ObjectRecord.from_dict(o) for o in d.get("objects", [])),
            schema=int(d.get("schema", RECORD_SCHEMA)),
        )

    def by_path(self) -> dict[str, ObjectRecord]:
        return {o.path: o for o in self.objects}


def read_record(version_dir: str | os.PathLike[str]) -> VersionRecord | None:
    """The version record of a directory (or a symlinked folder); None if it has none."""
    path = Path(version_dir) / VERSION_RECORD
    try:
        with open(path, encoding="utf-8") as f:
            return VersionRecord.from_json(json.load(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise VersionError(f"{path}: unreadable version record ({err}); expected JSON "
                           "written by a2f-model-sync") from err


def write_record(version_dir: str | os.PathLike[str], record: VersionRecord) -> None:
    atomic_write_json(Path(version_dir) / VERSION_RECORD, record.to_json())


def new_version_id(objects: Iterable[ObjectRecord], now: float | None = None) -> str:
    """``<UTC time>-<8 hex of the object set>``: sortable by time, unique by content."""
    h = hashlib.sha256()
    for o in sorted(objects, key=lambda o: o.path):
        h.update(f"{o.path}\0{o.size}\0{o.etag}\0{o.version_id}\n".encode())
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"{stamp:%Y%m%dT%H%M%S}Z-{h.hexdigest()[:8]}-{secrets.token_hex(2)}"
