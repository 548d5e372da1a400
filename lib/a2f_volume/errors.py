"""One exception base for the whole project.

Every error carries an operator-facing ``message`` and a gRPC status *name* (the shared
package does not import grpc; the server maps the name to ``grpc.StatusCode``). The name is a
:data:`StatusName`: a misspelt one fails type-checking, and defining a subclass with a name
that is not a gRPC status code raises ``TypeError`` at import.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

#: The names of ``grpc.StatusCode`` members (the gRPC status codes, in code order).
StatusName = Literal[
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
]
STATUS_NAMES: tuple[StatusName, ...] = get_args(StatusName)


class A2FError(Exception):
    """Base of every error this project raises on purpose."""

    status: ClassVar[StatusName] = "INTERNAL"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.status not in STATUS_NAMES:
            raise TypeError(f"{cls.__qualname__}.status = {cls.status!r} is not a gRPC status "
                            f"code name; expected one of {', '.join(STATUS_NAMES)}")

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
