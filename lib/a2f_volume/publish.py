"""Atomic publication of files on the shared volume.

Writers create a temporary file *in the destination directory* (same filesystem), write,
``fsync``, then ``os.replace`` it over the final name and ``fsync`` the directory. Readers
therefore see the old complete file or the new complete file, never a partial one. Temporary
names follow :func:`a2f_volume.layout.temp_name` so that every watcher can ignore them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from a2f_volume.layout import temp_name


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry change (create, rename, unlink) to stable storage."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(dest: str | os.PathLike[str], mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it replaces ``dest`` atomically, else it vanishes."""
    dest = Path(dest)
    tmp = dest.with_name(temp_name(dest.name))
    f = open(tmp, "xb")  # noqa: SIM115 - closed in both branches below
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Publish ``data`` at ``dest`` atomically."""
    with atomic_writer(dest) as f:
        f.write(data)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    """Publish UTF-8 ``text`` at ``dest`` atomically."""
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    """Publish ``obj`` as indented, key-sorted JSON at ``dest`` atomically."""
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy ``src`` to ``dest`` through a temporary file and an atomic rename."""
    with open(src, "rb") as fin, atomic_writer(dest) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file (helper kept here so every service parses records the same way)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
