"""Verifying an adopted plain folder against the source, so its files are not fetched again.

The seed's volumes hold plain model folders. model-sync adopts them by default (moves them
into the versions store, :func:`a2f_volume.versions.adopt`) once the source can be listed;
while it cannot, they are left as they are and keep serving. An adopted version has no
object records, so :func:`verified_record` compares each of its files with the listing:
a file with the listed size whose content hash matches the listed ETag (an MD5 ETag of a
single-part S3 object, or the ``sha256:`` ETag of a ``file://`` source) is recorded as that
object and kept; every other file of the listing is downloaded. The next published version
then has a complete record like any other.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from a2f_model_sync.source import READ_CHUNK_BYTES, SourceObject
from a2f_volume.versions import ObjectRecord, VersionRecord

logger = logging.getLogger(__name__)


def _content_matches(path: Path, etag: str) -> bool:
    plain = etag.strip('"')
    if plain.startswith("sha256:"):
        h, want = hashlib.sha256(), plain[len("sha256:"):]
    elif len(plain) == 32 and "-" not in plain:
        h, want = hashlib.md5(), plain
    else:
        return False  # a multipart ETag is not a hash of the bytes: download to be sure
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest() == want


def verified_record(vdir: Path, record: VersionRecord,
                    listed: dict[str, SourceObject]) -> VersionRecord:
    """``record`` of an adopted version with the files that match the listing recorded."""
    objects = []
    for path, obj in sorted(listed.items()):
        local = vdir / path
        try:
            if local.is_file() and local.stat().st_size == obj.size and \
                    _content_matches(local, obj.etag):
                objects.append(ObjectRecord(path=path, key=obj.key, size=obj.size,
                                            etag=obj.etag))
        except OSError as err:
            logger.warning("adopted %s: cannot verify %s (%s); it is downloaded again",
                           record.model, local, err)
    logger.info("adopted model %s: %d of %d source objects verified on the volume, %d to "
                "download", record.model, len(objects), len(listed), len(listed) - len(objects))
    return VersionRecord(record.version_id, record.model, record.source, record.published_at,
                         tuple(objects), record.schema)
