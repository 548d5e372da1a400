"""Server settings: flags double as env vars, the seed's variables keep their meaning."""

from __future__ import annotations

from pathlib import Path

import pytest

from a2f_inference.server.cli import build_parser
from a2f_inference.server.config import ServerConfig
from a2f_volume.errors import InvalidArgumentError


def test_seed_env_vars_name_models_root_and_default_model() -> None:
    cfg = ServerConfig.from_env({"A2F_MODEL_DATA_PATH": "/models",
                                 "A2F_MODEL_PATH": "/models/a23/model.json"})
    assert cfg.models_root == Path("/models")
    assert cfg.default_model == "a23"
    assert cfg.port == 50051


def test_defaults_match_the_seed() -> None:
    cfg = ServerConfig.from_env({})
    assert cfg.models_root == Path("/data/models")
    assert cfg.default_model == "multi-diffusion"
    assert (cfg.max_clip_s, cfg.max_buffer_s, cfg.idle_timeout_s) == (300, 10, 30)


def test_flag_wins_over_env_var() -> None:
    args = build_parser().parse_args(["--port", "6000", "--max-streams", "3"])
    cfg = ServerConfig.from_args(args, {"A2F_INFERENCE_PORT": "7000",
                                        "A2F_INFERENCE_OUTPUT_FPS": "60"})
    assert (cfg.port, cfg.max_streams, cfg.output_fps) == (6000, 3, 60.0)


@pytest.mark.parametrize(("env", "needle"), [
    ({"A2F_INFERENCE_PORT": "x"}, "A2F_INFERENCE_PORT"),
    ({"A2F_INFERENCE_MAX_STREAMS": "0"}, "max_streams 0, expected >= 1"),
    ({"A2F_INFERENCE_ENGINE_POLICY": "maybe"}, "require-built"),
    ({"A2F_INFERENCE_INFERENCE_WORKERS": "-1"}, "inference_workers -1, expected 0"),
])
def test_bad_setting_names_the_setting_and_what_is_allowed(env: dict[str, str],
                                                           needle: str) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        ServerConfig.from_env(env)


@pytest.mark.parametrize(("workers", "threads", "cores", "plan"), [
    (0, 0, 1, (1, 1)),
    (0, 0, 2, (2, 1)),  # the 2-core machine: batches side by side, one thread each
    (0, 0, 16, (4, 4)),  # at most 4 automatic workers; the cores shared out as threads
    (0, 2, 8, (4, 2)),  # threads given: as many workers as fit
    (3, 0, 8, (3, 2)),  # workers given: the cores shared out
    (2, 3, 2, (2, 3)),  # both given: taken as they are
])
def test_cpu_plan_of_workers_and_threads(workers: int, threads: int, cores: int,
                                         plan: tuple[int, int]) -> None:
    from a2f_engine.onnxruntime_engine import cpu_plan

    assert cpu_plan(workers, threads, cores) == plan


def test_worker_plan_by_backend() -> None:
    from a2f_inference.server.engines import TENSORRT_AUTO_WORKERS, worker_plan

    auto = ServerConfig.from_env({})
    assert worker_plan("tensorrt", auto) == (TENSORRT_AUTO_WORKERS, 0)
    set3 = ServerConfig.from_env({"A2F_INFERENCE_INFERENCE_WORKERS": "3",
                                  "A2F_INFERENCE_ORT_THREADS": "1"})
    assert worker_plan("tensorrt", set3) == (3, 0)
    assert worker_plan("onnxruntime", set3) == (3, 1)


@pytest.mark.parametrize(("cpu_max", "cap"), [("max 100000\n", None), ("150000 100000\n", 2),
                                              ("50000 100000\n", 1), ("garbage\n", None)])
def test_usable_cores_honours_a_cgroup_cpu_limit(tmp_path: Path, cpu_max: str,
                                                 cap: int | None) -> None:
    import os

    from a2f_engine.onnxruntime_engine import usable_cores

    f = tmp_path / "cpu.max"
    f.write_text(cpu_max)
    mask = len(os.sched_getaffinity(0))
    assert usable_cores(str(f)) == (mask if cap is None else min(mask, cap))
    assert usable_cores(str(tmp_path / "missing")) == mask
