"""The shared settings loader: typed casting by declared field type, env names, flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from a2f_config import ConfigError, EnvLoader, cast, parse_bool
from a2f_volume.errors import InvalidArgumentError

Mode = Literal["fast", "safe"]


@dataclass(frozen=True)
class Settings:
    name: str = "x"
    count: int = 1
    ratio: float = 0.5
    enabled: bool = False
    root: Path = Path("/data")
    extra: Path | None = None
    mode: Mode = "safe"
    ports: tuple[int, ...] = ()
    pair: tuple[str, float] = ("a", 1.0)


LOADER = EnvLoader("APP_", {"root": ("APP_ROOT", "SEED_ROOT")})


def test_each_field_is_cast_by_its_declared_type() -> None:
    s = LOADER.load(Settings, {
        "APP_NAME": "n", "APP_COUNT": "3", "APP_RATIO": "0.25", "APP_ENABLED": "yes",
        "APP_ROOT": "/r", "APP_EXTRA": "/e", "APP_MODE": "fast", "APP_PORTS": "1, 2,3",
        "APP_PAIR": "b,2.5"})
    assert s == Settings("n", 3, 0.25, True, Path("/r"), Path("/e"), "fast", (1, 2, 3),
                         ("b", 2.5))
    assert isinstance(s.root, Path) and isinstance(s.extra, Path)


def test_unset_and_empty_variables_keep_the_defaults() -> None:
    assert LOADER.load(Settings, {"APP_COUNT": "", "APP_EXTRA": ""}) == Settings()


def test_listed_names_are_read_in_order_and_the_first_set_wins() -> None:
    assert LOADER.load(Settings, {"SEED_ROOT": "/seed"}).root == Path("/seed")
    assert LOADER.load(Settings, {"SEED_ROOT": "/seed", "APP_ROOT": "/app"}).root == Path("/app")
    assert LOADER.env_names("root") == ("APP_ROOT", "SEED_ROOT")
    assert LOADER.env_name("count") == "APP_COUNT"


def test_overrides_win_and_none_means_not_given() -> None:
    s = LOADER.load(Settings, {"APP_COUNT": "3"}, {"count": 7, "ratio": None})
    assert (s.count, s.ratio) == (7, 0.5)


@pytest.mark.parametrize(("env", "needle"), [
    ({"APP_COUNT": "many"}, "APP_COUNT='many': count 'many' is invalid, expected an integer"),
    ({"APP_RATIO": "half"}, "APP_RATIO='half': ratio 'half' is invalid, expected a number"),
    ({"APP_MODE": "quick"}, "mode 'quick' is invalid, expected one of ('fast', 'safe')"),
    ({"APP_ENABLED": "maybe"}, "expected a boolean (1/true/yes/on/y or 0/false/no/off/n)"),
    ({"APP_PORTS": "1,x"}, "APP_PORTS='1,x': ports '1,x' is invalid, expected a comma"),
    ({"APP_PAIR": "b"}, "expected 2 comma-separated values"),
])
def test_a_bad_value_names_the_variable_the_field_and_what_is_allowed(
        env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        LOADER.load(Settings, env)
    assert needle in str(exc.value)
    assert isinstance(exc.value, InvalidArgumentError) and isinstance(exc.value, ValueError)
    assert exc.value.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("TRUE", True), (" on ", True),
                                               ("y", True), ("0", False), ("Off", False),
                                               ("no", False), ("n", False)])
def test_boolean_spellings(raw: str, expected: bool) -> None:
    assert parse_bool(raw) is expected


def test_an_unsupported_field_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unsupported settings type"):
        cast("1", list[int])
    with pytest.raises(TypeError, match=r"only X \| None unions"):
        cast("1", int | str)


def test_flags_are_typed_and_unset_flags_stay_none() -> None:
    parser = argparse.ArgumentParser()
    LOADER.add_flags(parser, Settings)
    args = parser.parse_args(["--count", "4", "--enabled", "--mode", "fast", "--extra", "/x",
                              "--ports", "5,6"])
    assert (args.count, args.enabled, args.mode, args.extra, args.ports) == \
        (4, True, "fast", Path("/x"), (5, 6))
    assert args.ratio is None and args.name is None
    assert parser.parse_args(["--no-enabled"]).enabled is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "quick"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--count", "many"])
    help_text = parser.format_help()
    assert "env APP_ROOT or SEED_ROOT" in help_text and "env APP_COUNT" in help_text


def test_nothing_is_read_until_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_COUNT", "9")
    assert LOADER.load(Settings).count == 9
    monkeypatch.setenv("APP_COUNT", "10")
    assert LOADER.load(Settings).count == 10
