"""Console entry point ``a2f-inference`` (the server)."""

from __future__ import annotations

from a2f_inference.server.cli import main

__all__ = ["main"]
