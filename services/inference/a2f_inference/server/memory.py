"""Giving a released model version's memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

_libc: Any = None


def trim_memory() -> None:
    """Give the heap pages freed by a released version back to the operating system.

    ONNX Runtime and numpy free a version's buffers when it is closed, but glibc keeps the
    pages in its per-thread arenas; without a trim the resident size creeps up by a little
    at every reload although nothing leaks. A no-op where ``malloc_trim`` does not exist
    (musl, macOS).
    """
    global _libc
    gc.collect()
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim is not None:
        trim(0)
