"""The local manifest and the change plan.

The manifest of a model is the version record of its current version
(``<model>/.a2f-version.json``): for every object, the key, size, ETag, VersionId and S3
checksums recorded *at download time*. It lives inside the version it describes, so it can
never disagree with the files it describes (a crash between writing files and writing a
separate manifest cannot happen).

An object needs downloading when it is new, or when its size or ETag in the listing differs
from the record (a retrained network of the same size has a different ETag), or when the
local file is missing or has a different size. Nothing else is requested from the source: a
run where nothing changed costs one paginated listing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from a2f_model_sync.source import SourceObject
from a2f_volume.versions import ObjectRecord, VersionRecord


@dataclass
class ModelPlan:
    """What it takes to bring one model up to date."""

    model: str
    keep: dict[str, ObjectRecord] = field(default_factory=dict)  # unchanged, by path
    fetch: dict[str, SourceObject] = field(default_factory=dict)  # new or changed, by path
    dropped: list[str] = field(default_factory=list)  # paths no longer in the source

    @property
    def changed(self) -> bool:
        return bool(self.fetch or self.dropped)

    @property
    def fetch_bytes(self) -> int:
        return sum(o.size for o in self.fetch.values())


def plan_model(
    model: str,
    listed: dict[str, SourceObject],
    record: VersionRecord | None,
    version_dir: Path | None,
) -> ModelPlan:
    """Compare a model's listing with its current version record and files."""
    plan = ModelPlan(model)
    have = record.by_path() if record is not None else {}
    for path, obj in sorted(listed.items()):
        rec = have.get(path)
        if (
            rec is not None
            and version_dir is not None
            and rec.size == obj.size
            and rec.etag == obj.etag
            and _local_size(version_dir / path) == obj.size
        ):
            plan.keep[path] = rec
        else:
            plan.fetch[path] = obj
    plan.dropped = sorted(set(have) - set(listed))
    return plan


def _local_size(path: Path) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size
