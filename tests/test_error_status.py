"""``A2FError.status``: a gRPC status code name, checked when an error class is defined."""

from __future__ import annotations

import grpc
import pytest

from a2f_inference.server.errors import to_status
from a2f_volume.errors import STATUS_NAMES, A2FError, NotFoundError


def test_status_names_are_exactly_the_grpc_status_codes() -> None:
    assert set(STATUS_NAMES) == {code.name for code in grpc.StatusCode}


def test_a_misspelt_status_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r"Misspelt.status = 'NOT_FOUN' is not a gRPC status"):
        class Misspelt(A2FError):
            status = "NOT_FOUN"  # type: ignore[assignment]


def test_every_project_error_class_maps_to_its_own_status() -> None:
    import a2f_engine.errors  # noqa: F401  (its error classes register as subclasses)

    seen = []
    todo: list[type[A2FError]] = [A2FError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("a2f_"):  # not the test's own misspelt class
            seen.append(cls.__qualname__)
            assert grpc.StatusCode[cls.status].name == cls.status
    assert {"ModelFolderError", "UnavailableError", "EngineBuildError"} <= set(seen)
    assert to_status(NotFoundError("no model 'x'")) == (grpc.StatusCode.NOT_FOUND, "no model 'x'")
