"""Fixtures of the pipeline tests: small stand-in folders (generated once per session) and
real ONNX Runtime engines over them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_inference.pipeline import BatchScheduler, ModelRuntime
from a2f_standin import generate
from a2f_volume.model_folder import ModelFolder, load_model_folder


@pytest.fixture(scope="session")
def small_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFolder]:
    base = tmp_path_factory.mktemp("pipeline-standins")
    return {k: load_model_folder(generate(k, base / k, size="small", seed=0))
            for k in ("regression", "diffusion")}


class RecordingEngine:
    """A real ONNX Runtime engine that also keeps every batch it was fed (to check windows,
    state hand-over and batch sizes)."""

    def __init__(self, path: Path, max_batch: int) -> None:
        self._inner = OnnxRuntimeEngine(path, max_batch=max_batch, intra_op_threads=1)
        self.backend = self._inner.backend
        self.inputs = self._inner.inputs
        self.outputs = self._inner.outputs
        self.max_batch = max_batch
        self.calls: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        self.record = False
        self.run_threads: set[str] = set()  # names of the threads that ran batches

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.run_threads.add(threading.current_thread().name)
        out = self._inner.run(feeds)
        if self.record:
            self.calls.append(({k: v.copy() for k, v in feeds.items()},
                               {k: v.copy() for k, v in out.items()}))
        return out

    def set_resident_input(self, name: str, value: np.ndarray) -> None:
        self._inner.set_resident_input(name, value)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture(scope="session")
def engines(small_folders: dict[str, ModelFolder]) -> Iterator[dict[str, RecordingEngine]]:
    e = {k: RecordingEngine(f.onnx_path, f.max_batch) for k, f in small_folders.items()}
    yield e
    for eng in e.values():
        eng.close()


RuntimeFactory = Callable[..., ModelRuntime]


@pytest.fixture
def make_runtime(small_folders: dict[str, ModelFolder], engines: dict[str, RecordingEngine]
                 ) -> Iterator[RuntimeFactory]:
    """``make_runtime(kind, record=False, max_batch=None)``: a fresh runtime on the shared
    engine; schedulers started through ``start_scheduler`` are stopped at teardown."""
    made: list[BatchScheduler] = []

    def make(kind: str, record: bool = False, max_batch: int | None = None) -> ModelRuntime:
        eng = engines[kind]
        eng.calls.clear()
        eng.run_threads.clear()
        eng.record = record
        return ModelRuntime(small_folders[kind], eng, max_batch=max_batch)

    make.schedulers = made  # type: ignore[attr-defined]
    yield make
    for s in made:
        s.stop()
    for eng in engines.values():
        eng.record = False
        eng.calls.clear()
