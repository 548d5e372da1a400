"""Errors raised while building, verifying or loading engines."""

from __future__ import annotations

from a2f_volume.errors import A2FError


class EngineBuildError(A2FError):
    """Building an engine failed: names the model file and the reason."""

    status = "FAILED_PRECONDITION"


class EngineLoadError(A2FError):
    """A built engine cannot be loaded on this machine (wrong target, corrupt plan, ...)."""

    status = "FAILED_PRECONDITION"


class VerificationError(A2FError):
    """A new engine's outputs differ from ONNX Runtime's beyond the tolerance."""

    status = "FAILED_PRECONDITION"


class EngineClosedError(A2FError):
    """``run`` (or another call) on an engine after ``close``: the model was unloaded."""

    status = "UNAVAILABLE"


class EngineBusyError(A2FError):
    """Every execution context stayed in use for the whole check-out timeout."""

    status = "RESOURCE_EXHAUSTED"
