"""Hot reload of the Audio2Emotion model: new streams get the new version, open ones keep
theirs, the old version is released with its last stream (real registry and reloader, real
files, ONNX Runtime)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from a2f_inference.pipeline import StreamSession
from a2f_standin.emotion import generate_emotion
from a2f_volume.versions import unpublish

from .conftest import REGRESSION, Harness, build_engine, publish_version, speech

A2E = "a2e"


@pytest.fixture(scope="module")
def a2e_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("a2e-templates")
    return {seed: generate_emotion(base / f"s{seed}", size="small", seed=seed)
            for seed in (1, 2)}


def _finish(session: StreamSession) -> int:
    session.end_of_audio()
    frames = 0
    deadline = time.monotonic() + 60
    while not session.done:
        assert session.error is None, session.error
        assert time.monotonic() < deadline, "stream did not finish"
        session.wait(0.5)
        frames += len(session.take_frames())
    assert session.error is None, session.error
    return frames


def test_new_streams_get_the_new_a2e_version_open_streams_keep_theirs(
        harness_factory: Callable[..., Harness], a2e_templates: dict[int, Path]) -> None:
    h = harness_factory()
    publish_version(h.root, REGRESSION, seed=3, kind="regression")
    v1 = publish_version(h.root, A2E, seed=1, template=a2e_templates[1])
    h.reloader.start()
    h.settle((REGRESSION, A2E))
    assert h.registry.serving_key(A2E) is not None
    assert A2E not in h.registry.names()  # the A2E slot, not a face model

    lm = h.registry.acquire(REGRESSION)
    old = h.registry.acquire_a2e()
    assert old is not None and old.version == v1
    session = lm.runtime.open_stream(None, None, input_rate=16000,
                                     emotion_model=old.runtime)
    session.push_audio(speech(1.0))

    v2 = publish_version(h.root, A2E, seed=2, template=a2e_templates[2])
    build_engine(h.root, A2E)  # a new version goes live once its engine is built
    h.settle((A2E,))
    new = h.registry.acquire_a2e()
    assert new is not None and new.version == v2 and new is not old
    states = {st.name: st for st in h.registry.states()}
    assert [d.version for d in states[A2E].draining] == [v1]
    assert not old.closed  # the open stream keeps its version

    session.push_audio(speech(1.0, seed=1))
    assert _finish(session) == 60
    agg = session.emotions.aggregate(59, 59 / 30)
    assert agg.type_url.endswith("EmotionAggregate")
    session.close()
    h.registry.release_a2e(old)
    assert old.closed  # released with its last stream
    h.registry.release_a2e(new)
    h.registry.release(lm)
    states = {st.name: st for st in h.registry.states()}
    assert states[A2E].draining == [] and states[A2E].serving is new

    assert unpublish(h.root, A2E)
    h.settle((A2E,))
    assert h.registry.acquire_a2e() is None  # back to interpolated keyframes
    assert new.closed


def test_a2e_folders_not_selected_are_not_loaded(
        harness_factory: Callable[..., Harness], a2e_templates: dict[int, Path]) -> None:
    h = harness_factory()
    publish_version(h.root, REGRESSION, seed=3, kind="regression")
    publish_version(h.root, "a2e-one", seed=1, template=a2e_templates[1])
    publish_version(h.root, "a2e-two", seed=2, template=a2e_templates[2])
    h.reloader.start()
    h.settle((REGRESSION, "a2e-one", "a2e-two"))
    assert h.registry.acquire_a2e() is None
    states = {st.name: st for st in h.registry.states()}
    for name in ("a2e-one", "a2e-two"):
        assert states[name].state == "failed"
        assert "several" in states[name].error and "--a2e-model" in states[name].error
    assert states[REGRESSION].state == "serving"
