"""Hot reload in process: real stand-ins, real engines, real registry; no gRPC."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from a2f_inference.server.engines import EngineChecker
from a2f_inference.server.model import LoadedModel
from a2f_inference.server.reload import ReloadStatus, health_service_name
from a2f_inference.server.warmup import WarmUpError, warm_up_model
from a2f_volume.errors import NotFoundError
from a2f_volume.versions import unpublish

from .conftest import (
    DIFFUSION,
    REGRESSION,
    Harness,
    build_engine,
    publish_version,
    run_stream,
    speech,
)

Factory = Callable[..., Harness]


def _status(h: Harness, name: str = DIFFUSION) -> ReloadStatus:
    return h.reloader.status()[name]


def test_new_version_serves_new_streams_while_open_stream_stays_on_its_engine(
        harness_factory: Factory) -> None:
    h = harness_factory()
    v1 = publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    assert h.serving_version() == v1
    assert (DIFFUSION, True) in h.events

    pcm = speech(3.0)
    old = h.registry.acquire(DIFFUSION)
    assert old.version == v1
    reference_v1 = run_stream(old, pcm)
    v2: list[str] = []

    def swap(i: int) -> None:  # after the first chunk: publish and go live with v2
        if i == 0:
            v2.append(publish_version(h.root, DIFFUSION, seed=2))
            build_engine(h.root, DIFFUSION)
            h.settle()

    during = run_stream(old, pcm, chunks=3, between=swap)
    assert h.serving_version() == v2[0]
    # The stream that was open across the swap ran on v1 only: same frames as before.
    np.testing.assert_allclose(during, reference_v1, atol=1e-6)
    assert not old.closed, "the old version must stay while a stream uses it"

    new = h.registry.acquire(DIFFUSION)
    assert new.version == v2[0] and new is not old
    from_v2 = run_stream(new, pcm)
    assert np.abs(from_v2 - reference_v1).max() > 1e-3, "versions should differ"
    h.registry.release(new)

    h.registry.release(old)  # the last stream on v1 ends: v1 is released
    assert old.closed
    assert _status(h).loads == 2 and _status(h).failures == 0


def test_version_without_valid_engine_is_not_served_until_its_engine_is_published(
        harness_factory: Factory) -> None:
    h = harness_factory()
    v1 = publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    v2 = publish_version(h.root, DIFFUSION, seed=2)
    h.settle()
    assert h.serving_version() == v1
    st = _status(h)
    assert st.waiting_version == v2 and "no valid engine" in st.waiting_reason
    build_engine(h.root, DIFFUSION)
    h.settle()
    assert h.serving_version() == v2
    assert _status(h).waiting_version == ""


def test_engine_for_another_target_is_not_valid_here(harness_factory: Factory) -> None:
    h = harness_factory()
    publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    record = h.root / DIFFUSION / "network.ort.json"
    doc = json.loads(record.read_text())
    doc["target_fingerprint"] = "0" * 16  # as if built on another machine
    tmp = record.with_name(record.name + ".edit")
    tmp.write_text(json.dumps(doc))
    tmp.replace(record)
    status = EngineChecker()(h.root / DIFFUSION)
    assert not status.valid and "target changed" in status.reason


def test_failed_load_keeps_current_is_counted_and_retried_only_when_files_change(
        harness_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    h = harness_factory()
    v1 = publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    caplog.set_level(logging.INFO, logger="a2f_inference.server.reload")
    bad = publish_version(h.root, DIFFUSION, seed=2, corrupt=True)
    build_engine(h.root, DIFFUSION)  # the ONNX is fine: the engine builds, the load fails
    h.settle()
    assert h.serving_version() == v1
    st = _status(h)
    # one attempt, or two when the reloader saw the version before its engine record landed
    # (the record is a change of files, so it may retry then)
    failed = st.failures
    assert failed in (1, 2) and st.failed_version == bad and st.error
    assert any("failed to load version " + bad in r.getMessage() for r in caplog.records)
    assert h.metrics_registry.get_sample_value(
        "a2f_inference_model_loads_total", {"model": DIFFUSION, "result": "failed"}) == failed
    assert h.metrics_registry.get_sample_value(
        "a2f_inference_model_loads_total", {"model": DIFFUSION, "result": "loaded"}) == 1

    h.reloader.poke([DIFFUSION])  # nothing changed on disk: no further attempt
    h.settle()
    assert _status(h).failures == failed

    v3 = publish_version(h.root, DIFFUSION, seed=3)
    build_engine(h.root, DIFFUSION)
    h.settle()
    assert h.serving_version() == v3
    st = _status(h)
    assert st.failures == failed and st.failed_version == "" and st.error == ""


def test_version_failing_warm_up_is_not_installed(harness_factory: Factory) -> None:
    calls: list[str] = []

    def strict_warm_up(lm: LoadedModel) -> int:
        calls.append(lm.version)
        if len(calls) > 1:
            # Stands in for an engine that returns NaN (no such ONNX stand-in exists).
            raise WarmUpError("warm-up frame 0 has non-finite weights")
        return warm_up_model(lm)

    h = harness_factory(warm_up=strict_warm_up)
    v1 = publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    v2 = publish_version(h.root, DIFFUSION, seed=2)
    build_engine(h.root, DIFFUSION)
    h.settle()
    assert calls == [v1, v2]
    assert h.serving_version() == v1
    assert "non-finite" in _status(h).error
    assert h.reloader.status()[DIFFUSION].failures == 1


def test_removed_model_stops_taking_new_streams_and_open_ones_finish(
        harness_factory: Factory) -> None:
    h = harness_factory()
    publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    lm = h.registry.acquire(DIFFUSION)
    assert unpublish(h.root, DIFFUSION)
    h.settle()
    with pytest.raises(NotFoundError):
        h.registry.acquire(DIFFUSION)
    assert (DIFFUSION, False) in h.events
    assert not lm.closed
    frames = run_stream(lm, speech(1.0))  # the open stream still completes
    assert frames.shape[1] == 68 and np.isfinite(frames).all()
    h.registry.release(lm)
    assert lm.closed


def test_at_most_two_versions_resident_the_next_load_waits_for_the_drain(
        harness_factory: Factory) -> None:
    h = harness_factory()
    publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    first = h.registry.acquire(DIFFUSION)  # keeps v1 resident after the swap
    v2 = publish_version(h.root, DIFFUSION, seed=2)
    build_engine(h.root, DIFFUSION)
    h.settle()
    assert h.serving_version() == v2
    v3 = publish_version(h.root, DIFFUSION, seed=3)
    build_engine(h.root, DIFFUSION)
    h.reloader.poke([DIFFUSION])
    deadline = time.monotonic() + 30
    while "draining" not in _status(h).waiting_reason:
        assert time.monotonic() < deadline, _status(h)
        time.sleep(0.05)
    assert _status(h).waiting_version == v3
    assert h.reloader.wait_idle(1.0) is False  # it keeps retrying while v1 drains
    assert h.serving_version() == v2
    h.registry.release(first)  # v1 drained: v3 may load now
    deadline = time.monotonic() + 30
    while h.serving_version() != v3:
        assert time.monotonic() < deadline, _status(h)
        time.sleep(0.05)


def test_onnx_fallback_first_then_the_built_engine_replaces_it(
        harness_factory: Factory) -> None:
    h = harness_factory(engine_policy="onnx-fallback")
    v1 = publish_version(h.root, DIFFUSION, seed=1)
    h.reloader.start()
    h.settle()
    lm = h.registry.get(DIFFUSION)
    assert lm.version == v1
    onnx_fp = lm.fingerprint
    build_engine(h.root, DIFFUSION)
    h.settle()
    lm2 = h.registry.get(DIFFUSION)
    assert lm2.version == v1 and lm2.fingerprint != onnx_fp
    assert lm.closed  # no stream held the fallback: released at once


def test_require_built_policy_serves_nothing_without_an_engine(
        harness_factory: Factory) -> None:
    h = harness_factory(engine_policy="require-built")
    v1 = publish_version(h.root, DIFFUSION, seed=1)
    h.reloader.start()
    h.settle()
    assert h.serving_version() is None
    assert _status(h).waiting_version == v1
    build_engine(h.root, DIFFUSION)
    h.settle()
    assert h.serving_version() == v1


def test_plain_model_folder_is_served_and_a_second_model_loads_beside_it(
        harness_factory: Factory, tmp_path: Path) -> None:
    from a2f_standin.generate import generate

    h = harness_factory()
    generate("regression", h.root / REGRESSION, size="small", seed=4)
    publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    assert set(h.registry.names()) == {DIFFUSION, REGRESSION}
    assert h.registry.get(REGRESSION).version.startswith("local-")


def test_warm_up_runs_a_deterministic_stream(harness_factory: Factory) -> None:
    h = harness_factory()
    publish_version(h.root, DIFFUSION, seed=1)
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    lm = h.registry.get(DIFFUSION)
    assert warm_up_model(lm) == warm_up_model(lm) > 0


def test_health_service_names_are_per_model() -> None:
    assert health_service_name("a23") == "a2f.model.a23"
    assert health_service_name("a23") != health_service_name("multi-diffusion")
