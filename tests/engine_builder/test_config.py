"""Configuration: defaults, env vars (the seed's names included), validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from a2f_engine_builder.config import BuilderConfig, env_flag


def test_defaults_match_the_documented_ones() -> None:
    cfg = BuilderConfig.from_env({})
    assert cfg.models_root == Path("/data/models")
    assert (cfg.backend, cfg.precision, cfg.metrics_port) == ("auto", "fp32", 9102)
    assert not (cfg.once or cfg.skip_build or cfg.force_rebuild)


def test_seed_and_prefixed_env_vars_are_read() -> None:
    cfg = BuilderConfig.from_env({
        "A2F_MODEL_DATA_PATH": "/vol", "SKIP_TRT_BUILD": "1", "FORCE_TRT_REBUILD": "yes",
        "A2F_ENGINE_BUILDER_BACKEND": "onnxruntime", "A2F_ENGINE_BUILDER_POLL_INTERVAL_S": "5",
        "A2F_ENGINE_BUILDER_INOTIFY": "false", "A2F_ENGINE_BUILDER_METRICS_PORT": "0",
    })
    assert cfg.models_root == Path("/vol") and cfg.skip_build and cfg.force_rebuild
    assert cfg.backend == "onnxruntime" and cfg.poll_interval_s == 5.0
    assert cfg.inotify is False and cfg.metrics_port == 0


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), ("", False), ("0", False), ("false", False), ("OFF", False),
    ("1", True), ("true", True), ("yes", True),
])
def test_seed_flags_are_set_unless_false_ish(value: str | None, expected: bool) -> None:
    assert env_flag(value) is expected


@pytest.mark.parametrize(("env", "message"), [
    ({"A2F_ENGINE_BUILDER_BACKEND": "cuda"}, "expected one of ('auto'"),
    ({"A2F_ENGINE_BUILDER_PRECISION": "int8"}, "precision 'int8'"),
    ({"A2F_ENGINE_BUILDER_METRICS_PORT": "http"}, "A2F_ENGINE_BUILDER_METRICS_PORT='http'"),
    ({"A2F_ENGINE_BUILDER_BACKOFF_MAX_S": "1"}, "backoff_max_s must be >= backoff_initial_s"),
])
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as exc:
        BuilderConfig.from_env(env)
    assert message in str(exc.value)
