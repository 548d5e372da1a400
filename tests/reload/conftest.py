"""Helpers of the hot-reload tests: managed model versions, engines, a registry + reloader."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from a2f_inference.server.config import ServerConfig
from a2f_inference.server.metrics import InferenceMetrics
from a2f_inference.server.model import LoadedModel
from a2f_inference.server.modes import EnginePolicy
from a2f_inference.server.registry import ModelRegistry, Served
from a2f_inference.server.reload import ModelReloader
from a2f_volume import layout
from a2f_volume.versions import VersionRecord, switch, write_record

DIFFUSION = "multi-diffusion"
REGRESSION = "a23"


def publish_version(root: Path, model: str, seed: int, *, kind: str = "diffusion",
                    corrupt: bool = False, template: Path | None = None) -> str:
    """Publish a stand-in as a new managed version of ``model``, the way model-sync does
    (complete directory under ``.a2f/versions``, then an atomic symlink switch); its id.

    ``corrupt`` replaces one blendshape file with garbage (the ONNX stays valid, so an
    engine builds and the *load* fails). ``template`` copies an already generated folder
    (faster than generating again).
    """
    from a2f_standin.generate import generate

    vid = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}Z-s{seed}-{os.urandom(3).hex()}"
    staging = layout.staging_dir(root) / vid
    staging.parent.mkdir(parents=True, exist_ok=True)
    if template is not None:
        shutil.copytree(template, staging)
    else:
        generate(kind, staging, size="small", seed=seed)
    for name in (layout.ORT_ENGINE_NAME, layout.ORT_ENGINE_NAME + layout.ENGINE_RECORD_SUFFIX,
                 ".a2f-lease", layout.VERSION_RECORD):
        with contextlib.suppress(FileNotFoundError):
            (staging / name).unlink()
    if corrupt:
        victim = sorted(staging.glob("bs_skin_*.npz"))[0]
        victim.write_bytes(b"this is not an npz archive" * 100)
    write_record(staging, VersionRecord(version_id=vid, model=model, source="test",
                                        published_at=time.time()))
    final = layout.versions_dir(root, model) / vid
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    switch(root, model, vid)
    return vid


_builders: dict[Path, Any] = {}


def build_engine(root: Path, model: str) -> None:
    """Publish a valid ONNX Runtime engine for the model's current version (one engine
    builder per models root, as the engine-builder daemon has)."""
    from engine_builder.helpers import builder_for

    if root not in _builders:
        _builders.clear()
        _builders[root] = builder_for(root)
    outcome = _builders[root].ensure(root / model)
    assert outcome.ok, outcome


class Harness:
    """A real registry and reloader on one models root, no gRPC."""

    def __init__(self, root: Path, *, engine_policy: EnginePolicy = "onnx-fallback",
                 **reloader_kw: Any) -> None:
        self.root = root
        self.config = ServerConfig(models_root=root, model_path=root / DIFFUSION,
                                   engine_policy=engine_policy, ort_threads=1, max_batch=4,
                                   metrics_port=-1, port=0)
        self.metrics_registry = CollectorRegistry()
        self.metrics = InferenceMetrics(self.metrics_registry)
        self.registry = ModelRegistry(self.config, self.metrics)
        self.events: list[tuple[str, bool]] = []
        kw: dict[str, Any] = dict(poll_interval_s=0.5, debounce_s=0.05, use_inotify=True,
                                  metrics=self.metrics)
        kw.update(reloader_kw)
        self.reloader: ModelReloader[Served] = ModelReloader(
            root, self.registry, self.registry.load_version,
            require_built_engine=engine_policy == "require-built",
            on_change=lambda n, s: self.events.append((n, s)), **kw)

    def settle(self, names: tuple[str, ...] = (DIFFUSION, REGRESSION),
               timeout_s: float = 60.0) -> None:
        """Make the reloader look at ``names`` now and wait until it has nothing to do.

        (The watcher would report the change too, after its debounce; queueing the names
        directly keeps the tests free of sleeps.)
        """
        self.reloader.poke(names)
        assert self.reloader.wait_idle(timeout_s), "reloader still busy"

    def serving_version(self, name: str = DIFFUSION) -> str | None:
        key = self.registry.serving_key(name)
        return None if key is None else key[0]

    def close(self) -> None:
        self.reloader.stop()
        self.registry.close()


@pytest.fixture
def harness_factory(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kw: Any) -> Harness:
        root = tmp_path / "models"
        root.mkdir(exist_ok=True)
        h = Harness(root, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def speech(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    """Deterministic speech-like PCM (16-bit little-endian)."""
    from a2f_inference.audio import synthetic_speech

    return synthetic_speech(seconds, rate, seed=seed)


def run_stream(lm: LoadedModel, pcm: bytes, *, chunks: int = 1,
               between: Callable[[int], None] | None = None) -> np.ndarray:
    """Run one stream on a loaded version through its scheduler; its weights [frames, 68].

    ``between(i)`` is called after chunk ``i`` was pushed (to swap versions mid-stream).
    """
    session = lm.runtime.open_stream(None, None, input_rate=16000, constant_noise=True, seed=7)
    out: list[np.ndarray] = []
    try:
        step = (len(pcm) // chunks) & ~1
        for i in range(chunks):
            part = pcm[i * step:] if i == chunks - 1 else pcm[i * step:(i + 1) * step]
            session.push_audio(part)
            if between is not None:
                between(i)
        session.end_of_audio()
        deadline = time.monotonic() + 60
        while not session.done:
            assert session.error is None, session.error
            assert time.monotonic() < deadline, "stream did not finish"
            session.wait(0.5)
            out.extend(np.asarray(f.weights) for f in session.take_frames())
    finally:
        session.close()
    return np.stack(out)
