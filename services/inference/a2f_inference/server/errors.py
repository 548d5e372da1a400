"""The one place exceptions become gRPC status codes."""

from __future__ import annotations

import asyncio
import logging

import grpc

from a2f_volume.errors import A2FError

log = logging.getLogger(__name__)


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """gRPC code and operator-facing message for an exception.

    Project errors carry their status name; anything else is INTERNAL and its traceback is
    logged here (the client gets a short message, the operator the details).
    """
    if isinstance(exc, A2FError):
        code = getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL)
        return code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the stream was cancelled"
    log.error("unexpected error while serving a stream", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
