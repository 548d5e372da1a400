"""The streaming pipeline on a serving-graph engine against the reference path.

Reference path: the unmodified ``network.onnx`` in ONNX Runtime, the noise drawn on the host,
the NumPy projections of post-processing. Serving path: the composed serving graph
(``a2f_engine.serving_plan.composed_onnxruntime``), resident noise, per-window face mask and
pool inputs, ``process_streams_projected``. Real stand-in folders, real ONNX Runtime sessions,
the real scheduler. ``PoolNoiseNetwork`` is the one test double: the unmodified network with
its noise built from the pool exactly as a ``fresh`` serving graph builds it, so that the
reference path can receive the very noise the graph used.

Tolerance of the weights (documented in docs/pipeline.md): ``max |w_serving - w_ref| <=
WEIGHT_TOL``; the engine's products agree within the serving graph's fp32 tolerance, and the
smoothers and the bounded solve do not amplify that beyond it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from a2f_engine.base import TensorSpec
from a2f_engine.noise import draw_pool_mix, noise_pool, pool_noise
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_engine.serving_plan import composed_onnxruntime, uses_serving_graph
from a2f_inference.audio import synthetic_speech
from a2f_inference.pipeline import BatchScheduler, ModelRuntime
from a2f_inference.pipeline.frames import Frame
from a2f_inference.pipeline.offline import run_offline
from a2f_volume.model_folder import ModelFolder

WEIGHT_TOL = 2e-4
FACE_MASK: dict[str, object] = {"face_params": {"faceMaskLevel": 0.35, "faceMaskSoftness": 0.02}}


def _pcm(seconds: float, seed: int) -> bytes:
    return synthetic_speech(seconds, 16000, seed=seed)


def _weights(frames: list[Frame]) -> np.ndarray:
    return np.stack([f.weights for f in frames])


def _serving_runtime(folder: ModelFolder, noise: str = "constant", seed: int = 0
                     ) -> ModelRuntime:
    engine, info = composed_onnxruntime(folder, noise, max_batch=8,  # type: ignore[arg-type]
                                        intra_op_threads=1)
    return ModelRuntime(folder, engine, max_batch=8, serving=info, noise_seed=seed)


def _reference_runtime(folder: ModelFolder) -> ModelRuntime:
    return ModelRuntime(folder, OnnxRuntimeEngine(folder.onnx_path, max_batch=8,
                                                  intra_op_threads=1), max_batch=8)


class PoolNoiseNetwork:
    """Test double: the unmodified network, whose ``noise`` input is replaced by the pool
    noise a ``fresh`` serving graph builds for one stream opened with ``seed`` (rows and
    angles drawn from the same generator sequence; one window per run)."""

    def __init__(self, folder: ModelFolder, pool_rows: int, pool_seed: int, seed: int) -> None:
        self._net = OnnxRuntimeEngine(folder.onnx_path, max_batch=1, intra_op_threads=1)
        self.backend, self.inputs, self.outputs = "onnxruntime", self._net.inputs, self._net.outputs
        self.max_batch = 1
        d = folder.diffusion
        assert d is not None
        self._shape = (d.num_diffusion_steps + 1, d.num_frames)
        self._pool = noise_pool(pool_rows, d.frame_size, pool_seed)
        self._rows = pool_rows
        self._rng = np.random.Generator(np.random.SFC64(seed))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, mix = draw_pool_mix(self._rng, 1, *self._shape, self._rows)
        return self._net.run({**feeds, "noise": pool_noise(self._pool, rows, mix)})

    def set_resident_input(self, name: str, value: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._net.close()


def _spec_names(specs: tuple[TensorSpec, ...]) -> set[str]:
    return {s.name for s in specs}


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_constant_serving_path_equals_reference_every_identity(
        small_folders: dict[str, ModelFolder], kind: str) -> None:
    folder = small_folders[kind]
    serving, reference = _serving_runtime(folder, seed=7), _reference_runtime(folder)
    try:
        assert serving.serving is not None and "noise" not in serving.input_specs
        assert "constant_noise" not in serving.input_specs
        pcm = _pcm(1.3, seed=3)
        for ident in folder.identity_names:
            for params in (None, FACE_MASK):
                got = run_offline(serving, pcm, 16000, identity=ident, params=params, seed=1)
                want = run_offline(reference, pcm, 16000, identity=ident, params=params,
                                   constant_noise=True, seed=7)
                assert len(got) == len(want) > 0
                err = float(np.abs(_weights(got) - _weights(want)).max())
                assert err <= WEIGHT_TOL, (ident, params, err)
    finally:
        serving.engine.close()
        reference.engine.close()


def test_face_mask_changes_the_serving_output(small_folders: dict[str, ModelFolder]) -> None:
    folder = small_folders["diffusion"]
    serving = _serving_runtime(folder)
    try:
        pcm = _pcm(1.0, seed=4)
        plain = _weights(run_offline(serving, pcm, 16000))
        masked = _weights(run_offline(serving, pcm, 16000, params=FACE_MASK))
        assert float(np.abs(plain - masked).max()) > 1e-5  # the stand-in's weights are small
    finally:
        serving.engine.close()


def test_fresh_serving_path_equals_reference_with_the_same_noise(
        small_folders: dict[str, ModelFolder]) -> None:
    folder = small_folders["diffusion"]
    serving = _serving_runtime(folder, "fresh", seed=5)
    assert serving.serving is not None
    info = serving.serving.info
    assert {"noise_rows", "noise_mix"} <= set(serving.input_specs)
    assert "noise_pool" not in serving.input_specs
    reference = ModelRuntime(folder, PoolNoiseNetwork(folder, info.pool_rows, 5, seed=11),
                             max_batch=1)
    try:
        pcm = _pcm(1.3, seed=6)
        for params in (None, FACE_MASK):
            got = run_offline(serving, pcm, 16000, params=params, seed=11)
            reference.engine._rng = np.random.Generator(np.random.SFC64(11))  # type: ignore[attr-defined]
            want = run_offline(reference, pcm, 16000, params=params, seed=11)
            err = float(np.abs(_weights(got) - _weights(want)).max())
            assert len(got) == len(want) > 0 and err <= WEIGHT_TOL, err
        # fresh noise: two streams with other seeds differ
        other = run_offline(serving, pcm, 16000, seed=12)
        assert float(np.abs(_weights(got[: len(other)]) - _weights(other)).max()) > 0
    finally:
        serving.engine.close()
        reference.engine.close()


def test_constant_noise_is_bit_identical_for_the_same_audio(
        small_folders: dict[str, ModelFolder]) -> None:
    folder = small_folders["diffusion"]
    serving = _serving_runtime(folder, seed=3)
    again = _serving_runtime(folder, seed=3)  # another load of the same version
    try:
        pcm = _pcm(1.2, seed=9)
        a = _weights(run_offline(serving, pcm, 16000, seed=1))
        b = _weights(run_offline(serving, pcm, 16000, seed=2))  # the stream seed is unused
        c = _weights(run_offline(again, pcm, 16000, seed=1))
        assert np.array_equal(a, b) and np.array_equal(a, c)
    finally:
        serving.engine.close()
        again.engine.close()


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_output_does_not_depend_on_batch_mates(small_folders: dict[str, ModelFolder],
                                               kind: str) -> None:
    folder = small_folders[kind]
    serving = _serving_runtime(folder, seed=2)
    try:
        pcms = [_pcm(1.0 + 0.2 * i, seed=20 + i) for i in range(3)]
        idents = [folder.identity_names[i % len(folder.identity_names)] for i in range(3)]
        alone = [_weights(run_offline(serving, p, 16000, identity=ident, params=FACE_MASK))
                 for p, ident in zip(pcms, idents, strict=True)]
        sched = BatchScheduler(serving, max_wait_s=0.05)
        sched.start()
        try:
            sessions = [serving.open_stream(ident, FACE_MASK if i != 1 else None,
                                            input_rate=16000)
                        for i, ident in enumerate(idents)]
            for s, p in zip(sessions, pcms, strict=True):
                s.push_audio(p)
            for s in sessions:
                s.end_of_audio()
            together: list[list[Frame]] = [[] for _ in sessions]
            for i, s in enumerate(sessions):
                while not s.done:
                    assert s.wait(60.0)
                    assert s.error is None
                    together[i].extend(s.take_frames())
                s.close()
        finally:
            sched.stop()
        assert sched.batches < sum(len(f) for f in together)  # windows were batched
        # stream 0 and 2 ran with batch mates; stream 1 had other face parameters
        for i in (0, 2):
            err = float(np.abs(_weights(together[i]) - alone[i]).max())
            assert err <= WEIGHT_TOL, (i, err)
    finally:
        serving.engine.close()


def test_serving_graph_choice_per_kind_and_backend() -> None:
    assert uses_serving_graph("diffusion", "onnxruntime")
    assert uses_serving_graph("diffusion", "tensorrt")
    assert not uses_serving_graph("regression", "onnxruntime")
    assert uses_serving_graph("regression", "tensorrt")
    assert not uses_serving_graph("emotion", "tensorrt")


def test_old_engine_keeps_the_host_path(small_folders: dict[str, ModelFolder],
                                        tmp_path: Path) -> None:
    folder = small_folders["diffusion"]
    reference = _reference_runtime(folder)
    try:
        assert reference.serving is None and "noise" in reference.input_specs
        frames = run_offline(reference, _pcm(0.8, seed=1), 16000, seed=1)
        assert frames and np.all(np.isfinite(_weights(frames)))
    finally:
        reference.engine.close()
