"""Post-processing: filters, face mask, jaw and eyes, and projected path == explicit path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pn_synthetic import make_model

from a2f_bench.postprocess import benchmark_postprocess
from a2f_inference.pipeline.params import OUTPUT_BLENDSHAPE_NAMES, BlendshapeParamsNim, FaceParams
from a2f_inference.pipeline.postprocess import (
    FramePostprocessor,
    SecondOrderSmoother,
    face_mask,
    process_streams,
    rigid_fit,
    saccade_index,
    smoothing_alpha,
)
from a2f_volume.errors import InvalidArgumentError
from a2f_volume.model_folder import ModelFolder, load_model_folder


def test_smoothing_zero_passes_through() -> None:
    f = SecondOrderSmoother(0.0, 1 / 30)
    x = np.random.default_rng(0).standard_normal((10, 4))
    assert np.array_equal(f(x), x)


def test_first_frame_seeds_the_filter() -> None:
    f = SecondOrderSmoother(0.05, 1 / 30)
    x = np.full((5, 3), 2.5)
    assert np.allclose(f(x), 2.5)  # a constant input is not pulled towards zero


def test_step_response_matches_the_cascaded_formula() -> None:
    dt, smoothing = 1 / 30, 0.02
    a = 1 - 0.5 ** (dt / smoothing)
    assert smoothing_alpha(dt, smoothing) == pytest.approx(a)
    f = SecondOrderSmoother(smoothing, dt)
    x = np.concatenate([np.zeros((1, 1)), np.ones((12, 1))])
    y = f(x)[:, 0]
    # closed form of two cascaded first-order stages after a unit step at k = 1
    k = np.arange(1, 13)
    expected = 1 - (1 - a) ** k - k * a * (1 - a) ** k
    assert np.allclose(y[1:], expected, atol=1e-12)
    assert y[0] == 0.0


def test_filter_state_carries_across_calls() -> None:
    x = np.random.default_rng(1).standard_normal((20, 3))
    whole = SecondOrderSmoother(0.01, 1 / 30)(x)
    f = SecondOrderSmoother(0.01, 1 / 30)
    parts = np.concatenate([f(x[:7]), f(x[7:8]), f(x[8:])])
    assert np.allclose(parts, whole)


def test_face_mask_is_one_below_the_level_and_zero_above() -> None:
    y = np.linspace(0.0, 10.0, 101)
    neutral = np.stack([np.zeros_like(y), y, np.zeros_like(y)], axis=1).reshape(-1)
    m = face_mask(neutral, 0.6, 0.0085)
    assert m[0] > 0.999 and m[-1] < 1e-3
    assert m[60] == pytest.approx(0.5)
    assert np.all(np.diff(m) <= 0)


def test_rigid_fit_recovers_a_rotation_and_translation() -> None:
    rng = np.random.default_rng(2)
    src = rng.standard_normal((5, 3))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    t = np.array([0.3, -1.0, 2.0])
    dst = src @ q.T + t
    m = rigid_fit(src, dst)
    assert np.allclose(m[:3, :3], q, atol=1e-10) and np.allclose(m[:3, 3], t, atol=1e-10)
    assert np.allclose(m[3], [0, 0, 0, 1])


def test_saccade_index_wraps_at_5000() -> None:
    idx = saccade_index(10.0, np.array([0.0, 1.0, 5000 / 30.0]))
    assert idx.tolist() == [10, 40, 10]


def _face(model: ModelFolder, **over: float) -> FaceParams:
    base = FaceParams.from_config(model.identities[0].config)
    return FaceParams.from_nim(over, base)


def _rows(model: ModelFolder, pp: FramePostprocessor, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((n, pp.layout.size)), axis=0) * 0.3
    return (walk * (0.05 if model.diffusion is not None else 1.0)).astype(np.float32)


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
@pytest.mark.parametrize(
    "over",
    [{}, {"upperFaceSmoothing": 0.05, "lowerFaceSmoothing": 0.0, "blinkOffset": 0.4,
          "faceMaskLevel": 0.3, "faceMaskSoftness": 0.1}],
)  # fmt: skip
def test_projected_path_equals_explicit_path_synthetic(kind: str, over: dict[str, float]) -> None:
    model = make_model(kind)
    ident = model.identities[0]
    face = _face(model, **over)
    fast = FramePostprocessor(model, ident, face, fps=30.0)
    explicit = FramePostprocessor(model, ident, face, fps=30.0, fast=False)
    rows = _rows(model, fast, 24, 5)
    times = np.arange(24) / 30.0
    got = np.concatenate([fast.process(rows[:10], times[:10]), fast.process(rows[10:], times[10:])])
    want = explicit.process_explicit(rows, times)
    assert got.shape == (24, 68) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4
    assert (got > 1e-3).mean() > 0.05  # the comparison is not between two zero arrays


@pytest.fixture(scope="module")
def standin_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFolder]:
    generate = pytest.importorskip("a2f_standin.generate").generate
    out: dict[str, ModelFolder] = {}
    for kind in ("regression", "diffusion"):
        path = Path(tmp_path_factory.mktemp(f"standin-{kind}"))
        generate(kind, path, size="small")
        out[kind] = load_model_folder(path)
    return out


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_projected_path_equals_explicit_path_on_small_standin(
    standin_folders: dict[str, ModelFolder], kind: str
) -> None:
    model = standin_folders[kind]
    for ident in model.identities:
        face = FaceParams.from_config(ident.config)
        fast = FramePostprocessor(model, ident, face, fps=30.0)
        explicit = FramePostprocessor(model, ident, face, fps=30.0, fast=False)
        rows = _rows(model, fast, 20, 9)
        times = np.arange(20) / 30.0
        got = fast.process(rows, times)
        want = explicit.process_explicit(rows, times)
        assert np.abs(got - want).max() < 1e-4, ident.name
        assert np.count_nonzero(got > 1e-3) > 0


def test_nim_multipliers_offsets_and_clamping_apply_last() -> None:
    model = make_model("regression")
    ident = model.identities[0]
    face = _face(model)
    plain = FramePostprocessor(model, ident, face)
    rows = _rows(model, plain, 6, 3)
    base = plain.process(rows).astype(np.float64)
    jaw = OUTPUT_BLENDSHAPE_NAMES.index("JawOpen")
    tip = OUTPUT_BLENDSHAPE_NAMES.index("TongueTipUp")
    bs = BlendshapeParamsNim.from_nim({"JawOpen": 3.0}, {"TongueTipUp": -0.5})
    got = FramePostprocessor(model, ident, face, bs).process(rows).astype(np.float64)
    assert np.allclose(got[:, jaw], base[:, jaw] * 3.0, atol=1e-6)
    assert np.allclose(got[:, tip], base[:, tip] - 0.5, atol=1e-6)
    clamped = FramePostprocessor(
        model,
        ident,
        face,
        BlendshapeParamsNim.from_nim({"JawOpen": 3.0}, {"TongueTipUp": -0.5}, True),
    ).process(rows)
    assert clamped.min() >= 0.0 and clamped.max() <= 1.0


def test_eye_rotations_and_jaw_transforms() -> None:
    model = make_model("regression")
    ident = model.identities[0]
    face = _face(model)
    pp = FramePostprocessor(model, ident, face)
    rows = np.zeros((2, pp.layout.size), dtype=np.float32)
    rows[:, pp.layout.eyes] = [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]
    times = np.array([0.0, 1.0])
    rot = pp.eye_rotations(rows, times)
    sac = ident.saccade.astype(np.float64)
    expected0 = (
        np.array([0.0, -2.0, 0.0, 2.0]) + 1.0 * np.array([1, 2, 3, 4]) + 0.9 * np.tile(sac[0], 2)
    )
    expected1 = np.array([0.0, -2.0, 0.0, 2.0]) + 0.9 * np.tile(sac[30], 2)
    assert np.allclose(rot, [expected0, expected1], atol=1e-6)
    jaw = pp.jaw_transforms(rows)
    assert jaw.shape == (2, 4, 4)
    # zero jaw motion: pure translation by the lower-teeth height offset (-0.1 on y)
    assert np.allclose(jaw[0][:3, :3], np.eye(3), atol=1e-9)
    assert np.allclose(jaw[0][:3, 3], [0.0, -0.1, 0.0], atol=1e-9)


def test_rows_of_the_wrong_width_are_rejected() -> None:
    model = make_model("regression")
    ident = model.identities[0]
    pp = FramePostprocessor(model, ident, _face(model))
    with pytest.raises(InvalidArgumentError, match=r"expected \[frames, 53\]"):
        pp.process(np.zeros((3, 301), dtype=np.float32))


def test_benchmark_reports_a_rate() -> None:
    fps = benchmark_postprocess(make_model("diffusion"), frames=60, batch=30)
    assert fps > 0.0
    print(f"synthetic diffusion post-processing: {fps:.0f} frames/s")


def test_projections_are_cached_per_configuration_and_released_with_the_model() -> None:
    import gc

    from a2f_inference.pipeline import postprocess

    model = make_model("regression", seed=21)
    ident = model.identities[0]
    a = postprocess.skin_projection(ident, 0.6, 0.0085)
    assert postprocess.skin_projection(ident, 0.6, 0.0085) is a
    assert postprocess.skin_projection(ident, 0.5, 0.0085) is not a
    before = len(postprocess._projections)
    del model, ident, a
    gc.collect()
    assert len(postprocess._projections) <= before - 2


def test_limit_blas_threads_sets_and_reports_the_previous_count() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    from a2f_inference.pipeline.postprocess import limit_blas_threads

    before = {
        i["internal_api"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"
    }
    try:
        reported = limit_blas_threads(1)
        assert reported == before
        now = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert now and all(n == 1 for n in now)
    finally:
        for n in set(before.values()):
            threadpool_limits(limits=n, user_api="blas")


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_streams_processed_together_match_each_stream_alone(kind: str) -> None:
    """process_streams (shared projections, filters over all streams, vectorised solve)
    gives every stream exactly what its own calls give, whatever the other streams, their
    parameters (several groups) and the chunking."""
    model = make_model(kind)
    idents = model.identities
    setups = [
        (idents[0], _face(model), None),
        (idents[0], _face(model), None),
        (idents[-1], _face(model, upperFaceSmoothing=0.05, lowerFaceSmoothing=0.0), None),
        (idents[0], _face(model), BlendshapeParamsNim.from_nim({"JawOpen": 2.0}, {}, True)),
        (idents[0], _face(model, faceMaskLevel=0.3), None),
    ]
    rows = [_rows(model, FramePostprocessor(model, i, f, b), 23 + 4 * n, seed=n)
            for n, (i, f, b) in enumerate(setups)]
    pps = [FramePostprocessor(model, i, f, b) for i, f, b in setups]
    alone = [FramePostprocessor(model, i, f, b) for i, f, b in setups]
    rng = np.random.default_rng(5)
    pos = [0] * len(setups)
    while any(p < len(r) for p, r in zip(pos, rows, strict=True)):
        chunk = []
        for n, r in enumerate(rows):
            step = int(rng.integers(0, 9))  # some streams send nothing this time
            chunk.append(r[pos[n] : pos[n] + step])
            pos[n] += step
        for n, w in enumerate(process_streams(pps, chunk)):
            assert w.shape == (chunk[n].shape[0], 68)
            # same chunks alone (a product over more rows may round differently)
            assert np.array_equal(w, alone[n].process(chunk[n])), n


def test_a_stream_given_twice_is_refused() -> None:
    model = make_model("regression")
    pp = FramePostprocessor(model, model.identities[0], _face(model))
    r = _rows(model, pp, 2, 0)
    with pytest.raises(ValueError, match="appears twice"):
        process_streams([pp, pp], [r, r])
