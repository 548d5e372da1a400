"""Typed casting of environment variables and flags into a settings dataclass.

Supported field types (as written in the dataclass, ``from __future__ import annotations``
included): ``str``, ``int``, ``float``, ``bool``, ``pathlib.Path`` (any ``PurePath``),
``X | None`` (an empty variable counts as unset), ``Literal[...]`` (the text must be one of
the values), ``tuple[X, ...]`` and fixed ``tuple[X, Y]`` (comma-separated). Any other type
is a programming error and raises ``TypeError`` when the field is read.

Booleans accept ``1/true/yes/on/y`` and ``0/false/no/off/n`` (any case); anything else is
refused with the accepted spellings. A bad value raises :class:`ConfigError`, which names the
variable, the field, the text found and what is allowed; it is both the project's
``InvalidArgumentError`` (gRPC ``INVALID_ARGUMENT``) and a ``ValueError``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from a2f_volume.errors import InvalidArgumentError

T = TypeVar("T")

_WORDS: dict[Any, str] = {int: "an integer", float: "a number", str: "a string"}
TRUE_WORDS = ("1", "true", "yes", "on", "y")
FALSE_WORDS = ("0", "false", "no", "off", "n")


class ConfigError(InvalidArgumentError, ValueError):
    """A setting's text cannot be cast to its field's type or is not an allowed value."""


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on/y`` -> True, ``0/false/no/off/n`` -> False (any case), else ValueError."""
    low = raw.strip().lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise ValueError(f"expected a boolean ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)})")


def field_types(cls: type) -> dict[str, Any]:
    """The declared (evaluated) type of each dataclass field of ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None`` / ``Optional[X]``, else None."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0]
        raise TypeError(f"unsupported settings type {tp!r}: only X | None unions are read")
    return None


def describe(tp: Any) -> str:
    """What a value of ``tp`` looks like, for error messages and help texts."""
    inner = _optional_inner(tp)
    if inner is not None:
        return describe(inner)
    if get_origin(tp) is Literal:
        return f"one of {get_args(tp)!r}"
    if get_origin(tp) is tuple:
        return "a comma-separated list"
    if tp is bool:
        return "a boolean"
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "a path"
    return _WORDS.get(tp, f"a {getattr(tp, '__name__', tp)}")


def cast(raw: str, tp: Any) -> Any:
    """``raw`` as a value of type ``tp``; ValueError when the text does not fit the type."""
    inner = _optional_inner(tp)
    if inner is not None:
        return cast(raw, inner)
    origin = get_origin(tp)
    if origin is Literal:
        for allowed in get_args(tp):
            if raw == str(allowed):
                return allowed
        raise ValueError(f"expected one of {get_args(tp)!r}")
    if origin is tuple:
        return _cast_tuple(raw, get_args(tp))
    if tp is bool:
        return parse_bool(raw)
    if tp in (int, float, str):
        return tp(raw)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return tp(raw)
    raise TypeError(f"unsupported settings type {tp!r}")


def _cast_tuple(raw: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    items = [s.strip() for s in raw.split(",") if s.strip()]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(cast(s, args[0]) for s in items)
    if len(items) != len(args):
        raise ValueError(f"expected {len(args)} comma-separated values")
    return tuple(cast(s, a) for s, a in zip(items, args, strict=True))


@dataclass(frozen=True)
class EnvLoader:
    """Where each field of a settings dataclass is read from.

    ``prefix``: a field ``x_y`` is read from ``<prefix>X_Y``. ``names``: the variables read for
    a field instead, in order (the first one set and not empty wins), e.g. the seed's
    ``A2F_MODEL_DATA_PATH``.
    """

    prefix: str
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def env_names(self, field_name: str) -> tuple[str, ...]:
        """The variables read for ``field_name``, in order of precedence."""
        return self.names.get(field_name, (self.prefix + field_name.upper(),))

    def env_name(self, field_name: str) -> str:
        """The first (documented) variable of ``field_name``."""
        return self.env_names(field_name)[0]

    def read(self, cls: type, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The fields of ``cls`` set in ``environ`` (default ``os.environ``), typed."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, tp in field_types(cls).items():
            for var in self.env_names(name):
                raw = env.get(var)
                if raw is None or raw == "":
                    continue
                try:
                    values[name] = cast(raw, tp)
                except ValueError as err:
                    what = str(err) if str(err).startswith("expected") else \
                        f"expected {describe(tp)}"
                    raise ConfigError(f"{var}={raw!r}: {name} {raw!r} is invalid, {what}") \
                        from err
                break
        return values

    def load(self, cls: type[T], environ: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> T:
        """``cls(**values)``: the environment, then ``overrides`` (typed; None = not given)."""
        values = self.read(cls, environ)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)

    def add_flags(self, parser: argparse.ArgumentParser, cls: type,
                  helps: Mapping[str, str] | None = None) -> None:
        """One ``--field-name`` flag per field (default None: unset flags fall back to the
        environment, then the field's default), converted by the field's type; ``helps``
        gives a field's help text (the variables it is read from are appended)."""
        for name, tp in field_types(cls).items():
            flag = "--" + name.replace("_", "-")
            env_help = "env " + " or ".join(self.env_names(name))
            text = f"{helps[name]} ({env_help})" if helps and name in helps else env_help
            inner = _optional_inner(tp)
            base = tp if inner is None else inner
            if base is bool:
                parser.add_argument(flag, dest=name, default=None,
                                    action=argparse.BooleanOptionalAction, help=text)
            elif get_origin(base) is Literal:
                parser.add_argument(flag, dest=name, default=None,
                                    choices=[str(a) for a in get_args(base)], help=text)
            else:
                parser.add_argument(flag, dest=name, default=None, type=_flag_type(base),
                                    help=text)


def _flag_type(tp: Any) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return cast(raw, tp)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{raw!r}: expected {describe(tp)}") from err

    convert.__name__ = describe(tp)
    return convert
