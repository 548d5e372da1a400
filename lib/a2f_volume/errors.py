"""One exception base for the whole project.

Every error carries an operator-facing ``message`` and a gRPC status *name* (the shared
package does not import grpc; the server maps the name to ``grpc.StatusCode``).
"""

from __future__ import annotations


class A2FError(Exception):
    """Base of every error this project raises on purpose."""

    status: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(A2FError):
    """A request, parameter or flag is out of what is allowed."""

    status = "INVALID_ARGUMENT"


class NotFoundError(A2FError):
    """A named model, identity or file does not exist."""

    status = "NOT_FOUND"


class ResourceExhaustedError(A2FError):
    """A limit (streams, buffer, clip length, disk) was reached."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(A2FError):
    """Something took longer than its configured timeout."""

    status = "DEADLINE_EXCEEDED"


class UnavailableError(A2FError):
    """The service is shutting down or a dependency is unreachable."""

    status = "UNAVAILABLE"


class ModelFolderError(A2FError):
    """A model folder is malformed: names the file, the field, what was found and expected."""

    status = "FAILED_PRECONDITION"

    def __init__(self, path: str, field: str, found: object, expected: str) -> None:
        self.path = path
        self.field = field
        self.found = found
        self.expected = expected
        super().__init__(f"{path}: field '{field}': found {found!r}, expected {expected}")
