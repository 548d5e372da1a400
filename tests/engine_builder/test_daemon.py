"""Daemon mode in-process: reacts to new models and version swaps, backs off on failures."""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from a2f_engine.targets import onnxruntime_target
from a2f_engine_builder.watcher import BuildDaemon
from a2f_volume.engine_record import valid_engine
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths

from .helpers import builder_for, make_model

ORT = "onnxruntime"


def wait_for(cond: Callable[[], object], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def is_valid(folder: Path) -> bool:
    return valid_engine(ModelPaths(folder), ORT, onnxruntime_target(), HashCache()) is not None


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def daemon(models_root: Path, registry: CollectorRegistry) -> Iterator[BuildDaemon]:
    d = BuildDaemon(builder_for(models_root, registry), poll_interval_s=0.3, debounce_s=0.05,
                    backoff_initial_s=0.4, backoff_max_s=1.6)
    d.start()
    try:
        yield d
    finally:
        d.stop(grace_s=30)


def test_new_model_is_built_and_version_swap_builds_into_new_version(
        models_root: Path, daemon: BuildDaemon) -> None:
    make_model(models_root, "mark")
    wait_for(lambda: is_valid(models_root / "mark"))
    versions = models_root / ".a2f" / "versions" / "claire"
    va = make_model(versions, "v1", seed=1)
    link = models_root / ".claire.swap"
    link.symlink_to(va, target_is_directory=True)
    os.replace(link, models_root / "claire")
    wait_for(lambda: is_valid(models_root / "claire"))
    vb = make_model(versions, "v2", seed=2)
    link.symlink_to(vb, target_is_directory=True)
    os.replace(link, models_root / "claire")
    wait_for(lambda: (vb / "network.ort.json").is_file() and is_valid(models_root / "claire"))
    assert is_valid(va)  # version 1's engine stayed where it was, still valid for it


def test_failing_model_backs_off_and_recovers_when_fixed(
        models_root: Path, daemon: BuildDaemon, registry: CollectorRegistry,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # The broken model appears complete, in one rename: every attempt sees the same bytes.
    staged = make_model(models_root.parent, "bad")
    good_onnx = (staged / "network.onnx").read_bytes()
    (staged / "network.onnx").write_bytes(b"\x08\x07garbage")
    bad = models_root / "bad"
    os.rename(staged, bad)
    make_model(models_root, "good", seed=5)
    wait_for(lambda: is_valid(models_root / "good"))

    def failures() -> float:
        return registry.get_sample_value("a2f_engine_builder_builds_total",
                                         {"model": "bad", "result": "failed"}) or 0.0

    def consecutive() -> float | None:
        return registry.get_sample_value("a2f_engine_builder_consecutive_failures",
                                         {"model": "bad"})

    # The third attempt comes only after two back-off delays; the gauge follows the counter
    # once the daemon has recorded the outcome (poll for it: it is set after the build ends).
    wait_for(lambda: failures() >= 3)
    wait_for(lambda: consecutive() == failures())
    pattern = re.compile(r"^bad: build failed (\d+) time\(s\) in a row; next attempt in "
                         r"([0-9.]+)s$")
    attempts = [(int(m.group(1)), float(m.group(2)), r.created) for r in caplog.records
                if (m := pattern.match(r.getMessage()))]
    assert [n for n, _, _ in attempts[:3]] == [1, 2, 3]
    assert [d for _, d, _ in attempts[:3]] == [0.4, 0.8, 1.6]  # doubled, capped at the max
    for (_, delay, t_prev), (_, _, t_next) in itertools.pairwise(attempts):
        assert t_next - t_prev >= delay * 0.9  # a retry never comes before its back-off

    tmp = bad / "network.onnx.partial"
    tmp.write_bytes(good_onnx)
    os.replace(tmp, bad / "network.onnx")
    wait_for(lambda: is_valid(bad))
    wait_for(lambda: consecutive() == 0)
    wait_for(lambda: any("bad: recovered after" in r.getMessage() for r in caplog.records))


def test_removed_model_is_not_built_or_counted_as_failed(
        models_root: Path, daemon: BuildDaemon, registry: CollectorRegistry) -> None:
    folder = make_model(models_root, "gone")
    wait_for(lambda: is_valid(folder))
    passes = daemon.passes
    shutil.rmtree(folder)
    make_model(models_root, "after", seed=9)  # the daemon keeps working after the removal
    wait_for(lambda: is_valid(models_root / "after"))
    wait_for(lambda: daemon.passes > passes)  # the removal was seen and handled
    assert registry.get_sample_value("a2f_engine_builder_builds_total",
                                     {"model": "gone", "result": "failed"}) == 0
