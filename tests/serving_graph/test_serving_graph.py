"""The composed serving graph against the unmodified network + post-processing products.

Real stand-in folders, real ONNX Runtime sessions. The only stand-in object is
``FakeResidentEngine``: the ``set_resident_input`` seam of the engines is being added to
``a2f_engine.base``; the fake gives an ONNX Runtime engine that method (it adds the stored
values to every feed, as the ONNX Runtime engine will).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from a2f_engine.errors import EngineBuildError, VerificationError
from a2f_engine.noise import DEFAULT_POOL_ROWS, FreshSource, NoisePolicy
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_engine.serving_build import serving_build_spec
from a2f_engine.serving_graph import (
    ServingGraphInfo,
    compose_serving_graph,
    info_path,
    resident_inputs,
)
from a2f_engine.serving_verify import (
    SERVING_TOLERANCES,
    VerificationCase,
    compare_products,
    make_case,
    reference_products,
    run_graph,
    verify_serving_graph,
)
from a2f_engine.trt_flags import load_trt_info
from a2f_inference.pipeline.params import FaceParams
from a2f_inference.pipeline.postprocess import FramePostprocessor
from a2f_volume.model_folder import ModelFolder, load_model_folder

ATOL, RTOL = SERVING_TOLERANCES["fp32"]

CASES: list[tuple[str, NoisePolicy]] = [
    ("regression", "constant"), ("diffusion", "constant"), ("diffusion", "fresh")]


def _folder(kind: str, small_regression: Path, small_diffusion: Path) -> ModelFolder:
    return load_model_folder(small_regression if kind == "regression" else small_diffusion)


def _compose(folder: ModelFolder, tmp_path: Path, noise: NoisePolicy = "constant",
             source: FreshSource = "pool") -> tuple[Path, ServingGraphInfo]:
    path = tmp_path / f"serving-{folder.kind}-{noise}-{source}.onnx"
    info = compose_serving_graph(folder, path, noise=noise, fresh_source=source)
    return path, info


def _reference(folder: ModelFolder, info: ServingGraphInfo, case_feeds: dict[str, np.ndarray],
               case: VerificationCase) -> dict[str, np.ndarray]:
    net = OnnxRuntimeEngine(folder.onnx_path, optimize=False)
    try:
        return reference_products(folder, info, net.run(case_feeds), case.identity_index,
                                  case.level, case.softness)
    finally:
        net.close()


@pytest.mark.parametrize(("kind", "noise"), CASES)
def test_composed_equals_reference_for_every_identity_and_mask(
        kind: str, noise: NoisePolicy, small_regression: Path, small_diffusion: Path,
        tmp_path: Path) -> None:
    folder = _folder(kind, small_regression, small_diffusion)
    path, info = _compose(folder, tmp_path, noise)
    n = len(folder.identities)
    # every identity twice, with the defaults and with far-from-default mask parameters
    idx = [k % n for k in range(2 * n)]
    level = [0.6] * n + list(np.linspace(0.15, 0.95, n))
    softness = [0.0085] * n + list(np.linspace(0.001, 0.5, n))
    case = make_case(folder, info, 2 * n, seed=3, identity_index=idx, level=level,
                     softness=softness)
    assert case.network_feeds is not None
    engine = OnnxRuntimeEngine(path)
    got = run_graph(engine, case.graph_feeds, resident_inputs(info))
    want = _reference(folder, info, case.network_feeds, case)
    worst, errors, where = compare_products(got, want, ATOL, RTOL)
    assert worst <= 1.0, (where, errors)
    # the products are not trivially zero: the comparison means something
    assert float(np.abs(want["skin_lower"]).max()) > 0.0
    assert float(np.abs(want["skin_upper"]).max()) > 0.0
    assert float(np.abs(want["tongue"]).max()) > 0.0
    # the mask parameters matter: the default and the moved mask give different splits
    same_identity = [0, n]
    a, b = got["skin_lower"][same_identity[0]], got["skin_lower"][same_identity[1]]
    assert not np.allclose(a, b)


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_composed_products_are_what_the_pipeline_projects(
        kind: str, small_regression: Path, small_diffusion: Path, tmp_path: Path) -> None:
    """The graph's skin/tongue outputs equal the pipeline post-processor's own projections:
    with smoothing off, ``skin_atd(rows) - skin_atd(0) = s * (us * upper + ls * lower)``."""
    folder = _folder(kind, small_regression, small_diffusion)
    path, info = _compose(folder, tmp_path)
    n = len(folder.identities)
    case = make_case(folder, info, n, seed=5, identity_index=list(range(n)),
                     level=[0.35] * n, softness=[0.05] * n)
    assert case.network_feeds is not None
    got = run_graph(OnnxRuntimeEngine(path), case.graph_feeds, resident_inputs(info))
    net = OnnxRuntimeEngine(folder.onnx_path, optimize=False)
    raw = net.run(case.network_feeds)
    for k, ident in enumerate(folder.identities):
        face = FaceParams.from_nim({"upperFaceSmoothing": 0.0, "lowerFaceSmoothing": 0.0,
                                    "faceMaskLevel": 0.35, "faceMaskSoftness": 0.05,
                                    "upperFaceStrength": 0.7, "lowerFaceStrength": 1.3,
                                    "skinStrength": 0.9, "tongueStrength": 1.2}, ident.config)
        pp = FramePostprocessor(folder, ident, face, fps=60.0)
        if kind == "diffusion":
            rows = raw["prediction"][k, info.frame_start: info.frame_start + info.frames]
        else:
            rows = raw["result"][k]
        zero = np.zeros_like(rows)
        skin = pp.skin_atd(rows) - pp.skin_atd(zero)
        tongue = pp.tongue_atd(rows) - pp.tongue_atd(zero)
        pa, pt = info.skin_poses[k], info.tongue_poses[k]
        mine = 0.9 * (0.7 * got["skin_upper"][k, :, :pa] + 1.3 * got["skin_lower"][k, :, :pa])
        assert np.abs(mine - skin).max() <= ATOL + RTOL * np.abs(skin).max()
        mine_t = 1.2 * got["tongue"][k, :, :pt]
        assert np.abs(mine_t - tongue).max() <= ATOL + RTOL * np.abs(tongue).max()
        # columns past the identity's poses are zero
        assert not got["skin_upper"][k, :, pa:].any()


def test_constant_noise_is_bit_identical_and_resident(small_diffusion: Path,
                                                      tmp_path: Path) -> None:
    folder = load_model_folder(small_diffusion)
    path, info = _compose(folder, tmp_path, "constant")
    assert info.resident_inputs == ("constant_noise",)
    assert "constant_noise" in info.inputs and "noise" not in info.inputs
    case = make_case(folder, info, 2, seed=1)
    first = run_graph(OnnxRuntimeEngine(path), case.graph_feeds, resident_inputs(info))
    # a new engine and freshly drawn resident values: the same bits
    again = run_graph(OnnxRuntimeEngine(path), case.graph_feeds, resident_inputs(info))
    for name in info.outputs:
        assert np.array_equal(first[name], again[name]), name
    # the saved description round-trips
    assert ServingGraphInfo.load(info_path(path)) == info


@pytest.mark.parametrize(("kind", "noise"), CASES)
def test_an_item_does_not_depend_on_the_rest_of_its_batch(
        kind: str, noise: NoisePolicy, small_regression: Path, small_diffusion: Path,
        tmp_path: Path) -> None:
    folder = _folder(kind, small_regression, small_diffusion)
    path, info = _compose(folder, tmp_path, noise)
    engine = OnnxRuntimeEngine(path)
    resident = resident_inputs(info)
    big = make_case(folder, info, 4, seed=7)
    together = run_graph(engine, big.graph_feeds, resident)
    for k in (0, 2):
        alone_feeds = {n: (v[:, :, k:k + 1] if n == "input_latents" else v[k:k + 1])
                       for n, v in big.graph_feeds.items()}
        alone = run_graph(engine, alone_feeds, resident)
        for name in info.outputs:
            mine = together[name][:, :, k:k + 1] if name == "output_latents" \
                else together[name][k:k + 1]
            ref = float(np.abs(mine).max())
            # the same values up to float rounding of the network's batched products
            assert np.abs(alone[name] - mine).max() <= 1e-6 * max(ref, 1.0), (name, k)


def test_fresh_pool_noise_changes_the_output(small_diffusion: Path, tmp_path: Path) -> None:
    folder = load_model_folder(small_diffusion)
    path, info = _compose(folder, tmp_path, "fresh", "pool")
    assert info.resident_inputs == ("noise_pool",) and info.pool_rows == DEFAULT_POOL_ROWS
    engine = OnnxRuntimeEngine(path)
    resident = resident_inputs(info)
    a = make_case(folder, info, 2, seed=11)
    b = make_case(folder, info, 2, seed=12)
    feeds_b = {**a.graph_feeds, "noise_rows": b.graph_feeds["noise_rows"],
               "noise_mix": b.graph_feeds["noise_mix"]}
    out_a = run_graph(engine, a.graph_feeds, resident)
    out_b = run_graph(engine, feeds_b, resident)
    assert not np.allclose(out_a["skin_lower"], out_b["skin_lower"])


def test_fresh_rng_graph_draws_new_noise_every_run(small_diffusion: Path,
                                                   tmp_path: Path) -> None:
    folder = load_model_folder(small_diffusion)
    path, info = _compose(folder, tmp_path, "fresh", "rng")
    assert info.resident_inputs == ()
    engine = OnnxRuntimeEngine(path)
    case = make_case(folder, info, 2, seed=13)
    assert case.network_feeds is None
    one = engine.run(case.graph_feeds)
    two = engine.run(case.graph_feeds)
    assert all(np.all(np.isfinite(one[n])) for n in info.outputs)
    assert not np.array_equal(one["skin_lower"], two["skin_lower"])
    result = verify_serving_graph(engine, folder, info, batches=(1, 2))
    assert not result.compared


class FakeResidentEngine:
    """Fake of the engines' coming ``set_resident_input``: an ONNX Runtime engine that adds
    the stored inputs to every run (what the ONNX Runtime backend will do)."""

    def __init__(self, path: Path, perturb: str | None = None) -> None:
        self._engine = OnnxRuntimeEngine(path)
        self.backend = "fake-resident"
        self.inputs, self.outputs = self._engine.inputs, self._engine.outputs
        self.max_batch = 8
        self.resident: dict[str, np.ndarray] = {}
        self.fed: list[set[str]] = []
        self._perturb = perturb

    def set_resident_input(self, name: str, value: np.ndarray) -> None:
        self.resident[name] = value

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.fed.append(set(feeds))
        out = self._engine.run({**feeds, **self.resident})
        if self._perturb is not None:
            out[self._perturb] = out[self._perturb] * 1.01
        return out

    def close(self) -> None:
        self._engine.close()


@pytest.mark.parametrize(("kind", "noise"), CASES)
def test_verify_passes_and_uses_resident_inputs(
        kind: str, noise: NoisePolicy, small_regression: Path, small_diffusion: Path,
        tmp_path: Path) -> None:
    folder = _folder(kind, small_regression, small_diffusion)
    path, info = _compose(folder, tmp_path, noise)
    engine = FakeResidentEngine(path)
    result = verify_serving_graph(engine, folder, info, batches=(1, 3))
    assert result.compared and result.worst_ratio <= 1.0
    assert set(engine.resident) == set(info.resident_inputs)
    assert all(not (fed & set(info.resident_inputs)) for fed in engine.fed)
    assert set(result.errors) >= {"skin_upper", "skin_lower", "tongue", "jaw", "eyes"}


def test_verify_rejects_a_wrong_projection(small_diffusion: Path, tmp_path: Path) -> None:
    folder = load_model_folder(small_diffusion)
    path, info = _compose(folder, tmp_path)
    with pytest.raises(VerificationError, match="skin_lower"):
        verify_serving_graph(FakeResidentEngine(path, perturb="skin_lower"), folder, info)


def test_composing_a_network_without_the_named_tensors_fails_clearly(
        small_diffusion: Path, small_regression: Path, tmp_path: Path) -> None:
    folder = load_model_folder(small_diffusion)
    wrong = load_model_folder(small_regression)
    # a diffusion folder description over the regression network's ONNX
    bad = ModelFolder(**{**folder.__dict__, "onnx_path": wrong.onnx_path})
    with pytest.raises(EngineBuildError, match="no input 'window'"):
        compose_serving_graph(bad, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize(("kind", "noise"), CASES)
def test_build_spec_covers_every_dynamic_input_of_the_serving_graph(
        kind: str, noise: NoisePolicy, small_regression: Path, small_diffusion: Path,
        tmp_path: Path) -> None:
    folder = _folder(kind, small_regression, small_diffusion)
    path, info = _compose(folder, tmp_path, noise)
    spec = serving_build_spec(load_trt_info(folder.path), info)
    engine = OnnxRuntimeEngine(path)
    dynamic = {s.name for s in engine.inputs if any(d < 0 for d in s.shape)}
    assert set(spec.profiles) == dynamic
    for name, (lo, _mid, hi) in spec.profiles.items():
        spec_in = next(s for s in engine.inputs if s.name == name)
        shape, axis = spec_in.shape, spec_in.batch_axis
        assert len(lo) == len(shape) and lo[axis] == 1 and hi[axis] == folder.max_batch
        assert all(d < 0 or d == lo[i] == hi[i] for i, d in enumerate(shape))
    shapes_args = [a for a in spec.args if a.startswith("--maxShapes=")]
    assert len(shapes_args) == 1 and "noise:" not in shapes_args[0].replace("_noise", "")
    assert "face_mask_level:" in shapes_args[0]
