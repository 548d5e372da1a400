"""Blendshape solve: recovery of known weights, bounds, cancel pairs, symmetry, and the fast
solver against SciPy's BVLS."""

from __future__ import annotations

import numpy as np
import pytest
from pn_synthetic import blendshape_set

from a2f_inference.pipeline.solve import (
    CANCEL_UPPER_BOUND,
    BlendshapeSolver,
    FreeSetCache,
    build_problem,
    solve_box_qp,
    solve_box_qp_many,
    solve_box_qp_reference,
    solve_streams_blocks,
)
from a2f_volume.model_folder import ARKIT_SKIN_NPZ_KEYS, TONGUE_NAMES, BlendshapeSet


def _set(**kw: object) -> BlendshapeSet:
    rng = np.random.default_rng(int(kw.pop("seed", 3)))  # type: ignore[call-overload]
    return blendshape_set(rng, ARKIT_SKIN_NPZ_KEYS, 300, **kw)


def _pose(bs: BlendshapeSet, w: np.ndarray) -> np.ndarray:
    return bs.neutral.astype(np.float64) + w @ bs.deltas.astype(np.float64)


def test_solver_recovers_known_weights_from_synthesised_poses() -> None:
    # tiny regularisation, no temporal term, no pairs: the pose is an exact combination
    bs = _set(l1=1e-3, l2=1e-4, temporal=0.0, symmetry=0.0, cancel=False, inactive=0)
    solver = BlendshapeSolver(build_problem(bs))
    rng = np.random.default_rng(7)
    truth = rng.uniform(0.0, 1.0, (5, 52)) * (rng.uniform(size=(5, 52)) < 0.4)
    got = solver.solve_poses(_pose(bs, truth))
    assert np.abs(got - truth).max() < 1e-3


def test_weights_stay_in_bounds_for_poses_beyond_the_box() -> None:
    bs = _set(temporal=0.0, cancel=False, inactive=0, symmetric=False)
    solver = BlendshapeSolver(build_problem(bs))
    w = np.zeros((1, 52))
    w[0, :10] = 3.0  # far past the upper bound
    w[0, 10:20] = -2.0  # below the lower bound
    got = solver.solve_poses(_pose(bs, w))
    assert got.min() >= 0.0 and got.max() <= 1.0
    assert np.allclose(got[0, :10], 1.0, atol=1e-6)
    assert np.allclose(got[0, 10:20], 0.0, atol=1e-6)


def test_cancel_pair_keeps_only_the_larger_weight() -> None:
    bs = _set(l1=1e-3, l2=1e-4, temporal=0.0, symmetry=0.0, cancel=True, inactive=0)
    prob = build_problem(bs)
    assert prob.cancel_pairs == ((0, 2),)
    w = np.zeros((2, 52))
    w[0, 0], w[0, 2] = 0.7, 0.3  # pose 2 must be cancelled
    w[1, 0], w[1, 2] = 0.2, 0.6  # pose 0 must be cancelled
    got = BlendshapeSolver(prob).solve_poses(_pose(bs, w))
    assert got[0, 2] <= CANCEL_UPPER_BOUND and got[0, 0] > 0.5
    assert got[1, 0] <= CANCEL_UPPER_BOUND and got[1, 2] > 0.4
    # without the pair both stay
    free = BlendshapeSolver(
        build_problem(_set(l1=1e-3, l2=1e-4, temporal=0.0, symmetry=0.0, cancel=False, inactive=0))
    )
    both = free.solve_poses(_pose(bs, w))
    assert both[0, 2] > 0.2 and both[1, 0] > 0.1


def test_symmetry_term_pulls_paired_weights_together() -> None:
    kw = dict(l1=1e-3, l2=1e-4, temporal=0.0, cancel=False, inactive=0)
    asym = _set(symmetry=0.0, **kw)
    sym = _set(symmetry=100.0, **kw)
    left = ARKIT_SKIN_NPZ_KEYS.index("eyeBlinkLeft")
    right = ARKIT_SKIN_NPZ_KEYS.index("eyeBlinkRight")
    w = np.zeros((1, 52))
    w[0, left], w[0, right] = 0.8, 0.2
    a = BlendshapeSolver(build_problem(asym)).solve_poses(_pose(asym, w))
    s = BlendshapeSolver(build_problem(sym)).solve_poses(_pose(sym, w))
    assert abs(a[0, left] - a[0, right]) > 0.5
    assert abs(s[0, left] - s[0, right]) < 0.1 * abs(a[0, left] - a[0, right])


def test_inactive_poses_are_zero_then_offsets_apply() -> None:
    bs = _set(inactive=3)
    prob = build_problem(bs)
    assert prob.num_active == 49
    w = np.full((1, 52), 0.5)
    got = BlendshapeSolver(prob).solve_poses(_pose(bs, w))
    assert np.all(got[0, 49:] == 0.0)
    prob.offsets[49:] = 0.25  # model offsets apply to inactive poses too
    got = BlendshapeSolver(prob).solve_poses(_pose(bs, w))
    assert np.allclose(got[0, 49:], 0.25)


def test_temporal_term_uses_the_previous_frame() -> None:
    bs = _set(temporal=5.0, cancel=False, inactive=0, symmetric=False)
    w = np.zeros((1, 52))
    w[0, 5] = 0.9
    pose = _pose(bs, w)
    fresh = BlendshapeSolver(build_problem(bs)).solve_poses(pose)
    solver = BlendshapeSolver(build_problem(bs))
    solver.solve_poses(_pose(bs, np.full((1, 52), 0.6)))  # w_prev far from the target
    after = solver.solve_poses(pose)
    assert not np.allclose(after, fresh, atol=1e-3)
    solver.reset()
    assert np.allclose(solver.solve_poses(pose), fresh, atol=1e-12)


@pytest.mark.parametrize("n", [16, 52])
def test_fast_box_qp_matches_reference_bvls_on_random_problems(n: int) -> None:
    rng = np.random.default_rng(n)
    worst = 0.0
    state = None
    for _ in range(60):
        a = rng.standard_normal((3 * n, n))
        m = a.T @ a + rng.uniform(0.01, 1.0) * np.eye(n) + rng.uniform(0, 1) * np.ones((n, n))
        rhs = rng.standard_normal(n) * rng.uniform(0.5, 20.0)
        upper = np.ones(n)
        upper[rng.uniform(size=n) < 0.1] = CANCEL_UPPER_BOUND
        x_fast, state = solve_box_qp(m, rhs, upper, state)
        x_ref = solve_box_qp_reference(m, rhs, upper)
        worst = max(worst, float(np.abs(x_fast - x_ref).max()))
        assert x_fast.min() >= 0.0 and np.all(x_fast <= upper)
    assert worst < 1e-6


def test_fast_stream_solver_matches_reference_stream_solver() -> None:
    rng = np.random.default_rng(11)
    for names, kw in ((ARKIT_SKIN_NPZ_KEYS, {}), (TONGUE_NAMES, {"temporal": 5.0, "l2": 3.5})):
        bs = blendshape_set(rng, names, 200, **kw)
        prob = build_problem(bs)
        truth = rng.uniform(0.0, 1.0, (25, len(names))) * (rng.uniform(size=(25, len(names))) < 0.5)
        poses = _pose(bs, truth)
        fast = BlendshapeSolver(prob).solve_poses(poses)
        ref = BlendshapeSolver(prob, fast=False).solve_poses(poses)
        assert np.abs(fast - ref).max() < 1e-6


@pytest.mark.parametrize("n", [16, 52])
def test_many_problems_at_once_match_the_single_solver(n: int) -> None:
    """solve_box_qp_many: every row is the exact solution (against BVLS), and a row's result
    does not depend on the other rows solved with it."""
    rng = np.random.default_rng(100 + n)
    a = rng.standard_normal((3 * n, n))
    m = a.T @ a + 0.1 * np.eye(n) + 0.3 * np.ones((n, n))
    cache = FreeSetCache(m)
    k = 12
    states = np.zeros((k, n), dtype=np.int8)
    for _ in range(15):
        rhs = rng.standard_normal((k, n)) * rng.uniform(0.5, 20.0, (k, 1))
        upper = np.ones((k, n))
        upper[rng.uniform(size=(k, n)) < 0.1] = CANCEL_UPPER_BOUND
        x, new_states = solve_box_qp_many(m, rhs, upper, states, cache)
        for j in range(k):
            ref = solve_box_qp_reference(m, rhs[j], upper[j])
            assert np.abs(x[j] - ref).max() < 1e-6
            assert x[j].min() >= 0.0 and np.all(x[j] <= upper[j])
            x1, st1 = solve_box_qp_many(m, rhs[j : j + 1], upper[j : j + 1],
                                        states[j : j + 1], cache)
            assert np.array_equal(x1[0], x[j]) and np.array_equal(st1[0], new_states[j])
        states = new_states


def test_streams_solved_together_match_each_stream_alone() -> None:
    rng = np.random.default_rng(21)
    skin = build_problem(_set(seed=4))
    tongue = build_problem(blendshape_set(rng, TONGUE_NAMES, 80, temporal=5.0))
    counts = [9, 0, 4, 9, 1]
    atds = [(rng.standard_normal((c, skin.num_active)) * 3,
             rng.standard_normal((c, tongue.num_active))) for c in counts]
    alone = [solve_streams_blocks([(BlendshapeSolver(skin), BlendshapeSolver(tongue))],
                                  [blocks])[0] for blocks in atds]
    solvers = [(BlendshapeSolver(skin), BlendshapeSolver(tongue)) for _ in counts]
    together = solve_streams_blocks(solvers, atds)
    for (ws, wt), (gs, gt), (s, t) in zip(alone, together, atds, strict=True):
        assert np.array_equal(ws, gs) and np.array_equal(wt, gt)
        # blocks side by side = each block on its own (up to rounding)
        assert np.allclose(BlendshapeSolver(skin).solve_active(s), gs, rtol=0, atol=1e-9)
        assert np.allclose(BlendshapeSolver(tongue).solve_active(t), gt, rtol=0, atol=1e-9)
    # the solvers' state moved on exactly as alone: the next frame agrees too
    nxt = rng.standard_normal((1, skin.num_active))
    ref = BlendshapeSolver(skin)
    ref.solve_active(atds[0][0])
    assert np.array_equal(ref.solve_active(nxt), solvers[0][0].solve_active(nxt))
