"""Real builder processes: kill -9 at random points, two builders on one volume, daemon."""

from __future__ import annotations

import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from a2f_engine.loader import load_engine
from a2f_engine.serving_plan import info_from_record
from a2f_engine.serving_verify import verify_serving_graph
from a2f_engine.targets import onnxruntime_target
from a2f_engine.verify import verify_engine
from a2f_volume.engine_record import valid_engine
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths
from a2f_volume.model_folder import load_model_folder

from .helpers import (
    builder_cmd,
    builder_env,
    free_port,
    make_model,
    run_builder,
    write_regression_onnx,
)

ORT = "onnxruntime"


def _assert_no_false_valid(root: Path, models: list[str]) -> int:
    """Any engine the shared rule accepts must load and match ONNX Runtime; count them."""
    valid = 0
    for name in models:
        paths = ModelPaths(root / name)
        rec = valid_engine(paths, ORT, onnxruntime_target(), HashCache())
        if rec is None:
            continue
        valid += 1
        engine = load_engine(paths, ORT, intra_op_threads=1)
        serving = info_from_record(rec.serving_graph)
        try:
            if serving is not None:  # the composed serving graph, checked against the network
                verify_serving_graph(engine, load_model_folder(paths.folder), serving,
                                     batches=(2,), seed=11)
            else:
                verify_engine(engine, paths.onnx, "fp32", batches=(2,), seed=11)
        finally:
            engine.close()
    return valid


@pytest.mark.slow
def test_kill_9_at_random_points_never_leaves_a_false_valid_engine(models_root: Path) -> None:
    models = ["mark", "multi"]
    write_regression_onnx(make_model(models_root, "mark") / "network.onnx", hidden=1024)
    make_model(models_root, "multi", "diffusion")
    # Time one uninterrupted run from scratch, then kill runs at random points inside it.
    durations = []
    for args in (("--once",), ("--once", "--force-rebuild")):
        t0 = time.monotonic()
        first = run_builder(models_root, *args)
        durations.append(time.monotonic() - t0)
        assert first.returncode == 0, first.stderr
    full_s = min(durations)  # the machine is shared: do not let one slow run skew it
    rng = random.Random(1234)
    hits = 0
    rounds = 8
    for round_no in range(rounds):
        if round_no % 2 == 0:  # half the rounds start from scratch, half replace engines
            for name in models:
                for f in (models_root / name).glob("network.ort*"):
                    f.unlink()
            for f in (models_root / ".a2f" / "engines").glob("*"):
                f.unlink()
            (models_root / ".a2f" / "hash-cache.json").unlink(missing_ok=True)
        proc = subprocess.Popen(builder_cmd(models_root, "--once", "--force-rebuild"),
                                env=builder_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.9) * full_s)
        if proc.poll() is None:
            hits += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_no_false_valid(models_root, models)
    assert hits >= 3, f"only {hits} of {rounds} kills hit a running build"
    done = run_builder(models_root, "--once")
    assert done.returncode == 0, done.stderr
    assert _assert_no_false_valid(models_root, models) == 2
    # Model folders are swept at start (under each model's lock); the shared engine cache
    # only after an hour (its writers may live in another pid namespace).
    leftovers = [p for name in models for p in (models_root / name).glob("*a2f-tmp*")]
    assert leftovers == [], "stale temporary files were not cleaned up"


def test_two_builders_on_one_volume_build_each_model_once(models_root: Path) -> None:
    make_model(models_root, "mark")
    make_model(models_root, "multi", "diffusion")
    procs = [subprocess.Popen(builder_cmd(models_root, "--once"), env=builder_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    logs = "\n".join(outs)
    for name in ("mark", "multi"):
        assert logs.count(f"Building ORT from ONNX: {name} ") == 1, logs
    assert _assert_no_false_valid(models_root, ["mark", "multi"]) == 2


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _wait_for(cond: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_daemon_builds_new_models_serves_metrics_and_stops_on_sigterm(
        models_root: Path) -> None:
    port = free_port()
    cmd = builder_cmd(models_root, "--poll-interval-s", "1", "--debounce-s", "0.2",
                      metrics_port=port)
    proc = subprocess.Popen(cmd, env=builder_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        make_model(models_root, "mark")
        paths = ModelPaths(models_root / "mark")
        _wait_for(lambda: valid_engine(paths, ORT, onnxruntime_target(), HashCache()))
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        _wait_for(lambda: 'a2f_engine_builder_builds_total{model="mark",result="built"} 1.0'
                  in _get(metrics_url))
        body = _get(metrics_url)
        assert 'a2f_engine_builder_engine_info{backend="onnxruntime"' in body
        assert "a2f_engine_builder_last_success_timestamp_seconds" in body
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, out
        assert "ORT engine created:" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
