"""Blendshape solve: pose (or its projection ``Aᵀd``) -> blendshape weights.

Per frame, over the active poses of one blendshape set (spec section 4)::

    A   = delta columns of the active poses, rows restricted to the frontal mask
    d   = target - neutral
    s   = (bbox diagonal of neutral / templateBBSize)^2
    M   = AᵀA + L1^2 * 0.25 s * 𝟙 + L2 * 10 s * I + T * 100 s * I + Sym * 10 s * SᵀS
    rhs = Aᵀd + T * s * w_prev
    w   = argmin 1/2 wᵀMw - rhsᵀw  subject to 0 <= w <= ub        (ub = 1)

then, for each cancel pair, the smaller weight's upper bound becomes 1e-10 and the system is
solved again; ``w_prev <- w``; inactive poses are 0; the model's multipliers and offsets apply.

Two solvers of the box-constrained quadratic program are provided:

* :func:`solve_box_qp_reference`: SciPy's bounded-variable least squares (``lsq_linear``,
  ``method="bvls"``) on the Cholesky factor of ``M`` -- slow, used to validate;
* :func:`solve_box_qp`: block principal pivoting (full exchange with Murty's single-exchange
  fallback, so it terminates) on the small dense ``P x P`` system, warm-started from the
  previous frame's active set. It is exact (KKT conditions hold to the tolerance), not an
  iterative approximation, and typically needs one or two linear solves per frame.

:class:`BlendshapeSolver` keeps the per-stream state (``w_prev`` and the warm start) and
solves ``[F]`` consecutive frames of one stream given ``Aᵀd`` rows (the fast path, fed by the
projections of :mod:`.postprocess`) or full poses.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from scipy.optimize import lsq_linear

from a2f_volume.model_folder import BlendshapeSet

logger = logging.getLogger(__name__)

#: Upper bound given to the smaller weight of a cancel pair.
CANCEL_UPPER_BOUND = 1e-10
#: Solver tolerance (spec: BVLS tolerance 1e-10), relative to the problem's scale.
SOLVE_TOLERANCE = 1e-10

_FREE, _LOWER, _UPPER = 0, -1, 1
_TINY_BOX = 1e-8


@dataclass(frozen=True)
class SolveProblem:
    """The fixed (per blendshape set) parts of the solve, over the ``Pa`` active poses.

    ``rows`` are the indices of the flat xyz values the solve uses (the frontal mask expanded
    to x, y, z; all values without a mask); ``a`` holds the active delta columns on those
    rows. Indices in ``cancel_pairs`` are positions among the active poses.
    """

    num_poses: int  # P, all poses of the set (npz order, neutral excluded)
    active: np.ndarray  # int64 [Pa], indices into the P poses
    rows: np.ndarray  # int64 [R]
    a: np.ndarray  # float32 [R, Pa]
    neutral: np.ndarray  # float64 [R], neutral values on ``rows``
    scale: float  # s
    m: np.ndarray  # float64 [Pa, Pa]
    temporal_rhs: float  # T * s, multiplies w_prev in the rhs
    cancel_pairs: tuple[tuple[int, int], ...]
    multipliers: np.ndarray  # float64 [P]
    offsets: np.ndarray  # float64 [P]
    free_sets: FreeSetCache = field(compare=False, repr=False)  # shared by all its streams

    @property
    def num_active(self) -> int:
        return int(self.active.size)

    def project(self, targets: np.ndarray) -> np.ndarray:
        """``Aᵀ(target - neutral)`` for full poses ``[F, N*3]`` (or ``[N*3]``) -> ``[F, Pa]``."""
        t = np.atleast_2d(np.asarray(targets))
        d = t[:, self.rows].astype(np.float64) - self.neutral
        return d @ self.a.astype(np.float64)


def value_rows(frontal_mask: np.ndarray | None, num_values: int) -> np.ndarray:
    """Flat xyz indices of the vertices in ``frontal_mask`` (all values when ``None``)."""
    if frontal_mask is None:
        return np.arange(num_values, dtype=np.int64)
    v = np.asarray(frontal_mask, dtype=np.int64)
    return (v[:, None] * 3 + np.arange(3, dtype=np.int64)[None, :]).reshape(-1)


def bbox_scale(neutral: np.ndarray, template_bb_size: float) -> float:
    """``s = (bbox diagonal of the neutral / templateBBSize)^2``."""
    pts = np.asarray(neutral, dtype=np.float64).reshape(-1, 3)
    diag = float(np.linalg.norm(pts.max(axis=0) - pts.min(axis=0)))
    return (diag / float(template_bb_size)) ** 2


def _pairs(ids: np.ndarray, position: dict[int, int]) -> list[tuple[int, int]]:
    """Pairs of active positions sharing a non-negative id (pairs with an inactive member
    are dropped)."""
    out: list[tuple[int, int]] = []
    for pid in np.unique(ids[ids >= 0]):
        members = [int(i) for i in np.flatnonzero(ids == pid)]
        if len(members) == 2 and all(m in position for m in members):
            out.append((position[members[0]], position[members[1]]))
    return out


def build_problem(bs: BlendshapeSet) -> SolveProblem:
    """Assemble :class:`SolveProblem` for one blendshape set (cost: one ``AᵀA``)."""
    p = bs.params
    num = len(bs.pose_names)
    active = np.flatnonzero(np.asarray(p.active, dtype=bool)).astype(np.int64)
    position = {int(i): k for k, i in enumerate(active)}
    rows = value_rows(bs.frontal_mask, bs.neutral.size)
    a = np.ascontiguousarray(bs.deltas[active][:, rows].T, dtype=np.float32)
    a64 = a.astype(np.float64)
    s = bbox_scale(bs.neutral, p.template_bb_size)
    pa = active.size
    m = a64.T @ a64
    m += (p.l1**2) * 0.25 * s * np.ones((pa, pa))
    m += (p.l2 * 10.0 * s + p.temporal * 100.0 * s) * np.eye(pa)
    sym = _pairs(np.asarray(p.symmetry_pairs), position)
    if sym:
        smat = np.zeros((len(sym), pa))
        for r, (i, j) in enumerate(sym):
            smat[r, i], smat[r, j] = 1.0, -1.0
        m += p.symmetry * 10.0 * s * (smat.T @ smat)
    return SolveProblem(
        num_poses=num,
        active=active,
        rows=rows,
        a=a,
        neutral=bs.neutral[rows].astype(np.float64),
        scale=s,
        m=m,
        temporal_rhs=p.temporal * s,
        cancel_pairs=tuple(_pairs(np.asarray(p.cancel_pairs), position)),
        multipliers=np.asarray(p.multipliers, dtype=np.float64),
        offsets=np.asarray(p.offsets, dtype=np.float64),
        free_sets=FreeSetCache(m),
    )


V = TypeVar("V")


class ObjectKeyedLRU(Generic[V]):
    """LRU cache of values derived from an owner object (compared by identity) and a few
    hashable parameters. The owner is held weakly: when a model version is unloaded, its
    entries go away with it."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Hashable, ...], tuple[weakref.ref[Any], V]] = OrderedDict()
        self._lock = threading.RLock()  # finalizers may run while the lock is held

    def get(self, owner: object, params: tuple[Hashable, ...], build: Callable[[], V]) -> V:
        key = (id(owner), *params)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is owner:
                self._entries.move_to_end(key)
                return hit[1]
        value = build()
        with self._lock:
            self._entries[key] = (weakref.ref(owner), value)
            self._entries.move_to_end(key)
            weakref.finalize(owner, self._drop, id(owner))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def _drop(self, owner_id: int) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == owner_id]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


_problems: ObjectKeyedLRU[SolveProblem] = ObjectKeyedLRU(16)


def problem_for(bs: BlendshapeSet) -> SolveProblem:
    """:func:`build_problem`, cached per blendshape set object (LRU, 16 entries)."""
    return _problems.get(bs, (), lambda: build_problem(bs))


# --------------------------------------------------------------------------------------
# box-constrained QP solvers: min 1/2 xᵀMx - rᵀx, 0 <= x <= ub


def solve_box_qp_reference(
    m: np.ndarray, rhs: np.ndarray, upper: np.ndarray, tol: float = SOLVE_TOLERANCE
) -> np.ndarray:
    """Reference solve with SciPy's BVLS on ``R`` (``M = RᵀR``) and ``b = R⁻ᵀ rhs``."""
    m = np.asarray(m, dtype=np.float64)
    rhs = np.asarray(rhs, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    x = np.zeros(rhs.size)
    # SciPy's BVLS can stall on a [0, 1e-10] box (the cancel bound): such variables are held
    # at 0 for the solve, then moved to their tiny upper bound if the gradient asks for it.
    tiny = upper <= _TINY_BOX
    keep = np.flatnonzero(~tiny)
    if keep.size:
        mk = m[np.ix_(keep, keep)]
        low_tri = np.linalg.cholesky(mk)  # M = L Lᵀ, R = Lᵀ
        b = np.linalg.solve(low_tri, rhs[keep])
        res = lsq_linear(
            low_tri.T, b, bounds=(np.zeros(keep.size), upper[keep]),
            method="bvls", tol=tol, lsmr_tol=None,
        )  # fmt: skip
        x[keep] = np.clip(np.asarray(res.x, dtype=np.float64), 0.0, upper[keep])
    if tiny.any():
        g = m @ x - rhs
        x[tiny] = np.where(g[tiny] < 0.0, upper[tiny], 0.0)
    return x


class FreeSetCache:
    """Inverses of ``M_FF`` keyed by the free set ``F``, shared by every stream solving the
    same problem (consecutive frames mostly reuse a few free sets). Bounded; thread-safe
    enough for CPython (single dict operations)."""

    def __init__(self, m: np.ndarray, max_entries: int = 1024) -> None:
        self.m = m
        self.scale = max(1.0, float(np.abs(m.diagonal()).max())) if m.size else 1.0
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._affine: dict[bytes, tuple[np.ndarray, np.ndarray, int, int]] = {}

    def affine(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
        """For a partition ``state`` and the unit box: ``W``, ``c``, ``n``, ``nx`` such that
        ``y = W @ rhs + c`` holds the partition's solution ``x = y[:n]``, then the
        quantities that must be ``>= -xtol`` for it to be optimal (``x_F`` and
        ``1 - x_F``: ``y[n:n+nx]``), then those that must be ``>= -gtol`` (the gradient at
        the lower bound, minus the gradient at the upper bound: ``y[n+nx:]``).

        Everything is affine in ``rhs`` once the partition is fixed, so a frame whose
        partition did not change (the common case: the previous frame's warm start) costs
        one small matrix product and three comparisons.
        """
        key = state.tobytes()
        hit = self._affine.get(key)
        if hit is not None:
            return hit
        m = self.m
        n = state.size
        free = state == _FREE
        fi, inv = self.get(free)
        x0 = np.where(state == _UPPER, 1.0, 0.0)
        xmat = np.zeros((n, n))
        xmat[np.ix_(fi, fi)] = inv
        xc = x0.copy()
        if fi.size:
            xc[fi] -= inv @ (m @ x0)[fi]
        gmat = m @ xmat - np.eye(n)
        gc = m @ xc
        lo = np.flatnonzero(state == _LOWER)
        up = np.flatnonzero(state == _UPPER)
        w = np.concatenate([xmat, xmat[fi], -xmat[fi], gmat[lo], -gmat[up]])
        c = np.concatenate([xc, xc[fi], 1.0 - xc[fi], gc[lo], -gc[up]])
        hit = (np.ascontiguousarray(w), c, n, 2 * fi.size)
        if len(self._affine) >= self.max_entries // 4:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                del self._affine[next(iter(self._affine))]
        self._affine[key] = hit
        return hit

    def get(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = free.tobytes()
        hit = self._entries.get(key)
        if hit is None:
            fi = np.flatnonzero(free)
            hit = (fi, np.linalg.inv(self.m[np.ix_(fi, fi)]))
            if len(self._entries) >= self.max_entries:
                # another stream may evict concurrently
                with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                    del self._entries[next(iter(self._entries))]
            self._entries[key] = hit
        return hit


def solve_box_qp(
    m: np.ndarray,
    rhs: np.ndarray,
    upper: np.ndarray,
    state: np.ndarray | None = None,
    tol: float = SOLVE_TOLERANCE,
    cache: FreeSetCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact box-QP solve by block principal pivoting, warm-started from ``state``.

    ``state`` (int8 per variable: 0 free, -1 at 0, +1 at its upper bound) is the previous
    frame's final partition; the returned state seeds the next call. ``cache`` (built for
    the same ``m``) reuses the inverses of ``M_FF``. Falls back to
    :func:`solve_box_qp_reference` if pivoting has not converged after ``10 n + 20`` steps.
    """
    n = rhs.size
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int8)
    if cache is None:
        cache = FreeSetCache(m)
    st = np.zeros(n, dtype=np.int8) if state is None else state.copy()
    scale = max(cache.scale, float(np.abs(rhs).max()))
    gtol = tol * scale
    xtol = tol
    hi = upper + xtol
    best = n + 1
    backups = 3
    x = np.zeros(n)
    for _ in range(10 * n + 20):
        free = st == _FREE
        at_upper = st == _UPPER
        x = np.where(at_upper, upper, 0.0)
        fi, inv = cache.get(free)
        if fi.size:
            x[fi] = inv @ (rhs - m @ x)[fi]
        g = m @ x - rhs
        bad = np.where(free, (x < -xtol) | (x > hi), np.where(at_upper, g > gtol, g < -gtol))
        if not bad.any():
            np.maximum(x, 0.0, out=x)
            return np.minimum(x, upper, out=x), st
        count = int(np.count_nonzero(bad))
        if count < best:
            best, backups = count, 3
            idx = np.flatnonzero(bad)
        elif backups > 0:
            backups -= 1
            idx = np.flatnonzero(bad)
        else:
            idx = np.flatnonzero(bad)[-1:]
        st[idx] = np.where(st[idx] == _FREE, np.where(x[idx] < 0.0, _LOWER, _UPPER), _FREE)
    logger.warning("box QP pivoting did not converge (n=%d); using the reference solver", n)
    x = solve_box_qp_reference(m, rhs, upper, tol)
    st = np.where(x <= xtol, _LOWER, np.where(x >= upper - xtol, _UPPER, _FREE)).astype(np.int8)
    return x, st


# --------------------------------------------------------------------------------------
# per-stream solver


class BlendshapeSolver:
    """Per-stream solve over one blendshape set; keeps ``w_prev`` and the warm start.

    ``fast=False`` uses the reference BVLS for every frame (for validation only).
    """

    def __init__(self, problem: SolveProblem, *, fast: bool = True) -> None:
        self.problem = problem
        self.fast = fast
        pa = problem.num_active
        self._upper = np.ones(pa)
        self._w_prev = np.zeros(pa)
        self._state = np.zeros(pa, dtype=np.int8)
        self._state_cancel = np.zeros(pa, dtype=np.int8)
        self._cache = problem.free_sets

    def reset(self) -> None:
        """Back to stream start (``w_prev = 0``)."""
        self._w_prev[:] = 0.0
        self._state[:] = _FREE
        self._state_cancel[:] = _FREE

    def _qp(self, rhs: np.ndarray, upper: np.ndarray, cancel: bool) -> np.ndarray:
        if not self.fast:
            return solve_box_qp_reference(self.problem.m, rhs, upper)
        if not cancel and rhs.size:
            # Warm start: if the previous frame's partition is still optimal (checked with
            # the same tolerances as solve_box_qp), its affine solution is the answer.
            w, c, n, nx = self._cache.affine(self._state)
            y = w @ rhs
            y += c
            gtol = SOLVE_TOLERANCE * max(self._cache.scale, float(np.abs(rhs).max()))
            if (nx == 0 or y[n : n + nx].min() >= -SOLVE_TOLERANCE) and (
                y.size == n + nx or y[n + nx :].min() >= -gtol
            ):
                return np.clip(y[:n], 0.0, upper)
        st = self._state_cancel if cancel else self._state
        x, st_new = solve_box_qp(self.problem.m, rhs, upper, st, cache=self._cache)
        if cancel:
            self._state_cancel = st_new
        else:
            self._state = st_new
        return x

    def solve_active(self, atd: np.ndarray) -> np.ndarray:
        """Raw solutions over the active poses for ``[F, Pa]`` rows of ``Aᵀd`` (frames in
        order); updates ``w_prev``. No multipliers/offsets."""
        prob = self.problem
        atd = np.atleast_2d(np.asarray(atd, dtype=np.float64))
        out = np.empty_like(atd)
        t = prob.temporal_rhs
        pairs = np.asarray(prob.cancel_pairs, dtype=np.intp).reshape(-1, 2)
        first, second = pairs[:, 0], pairs[:, 1]
        for f in range(atd.shape[0]):
            rhs = atd[f] + t * self._w_prev if t else atd[f]
            x = self._qp(rhs, self._upper, False)
            if pairs.size:
                smaller = np.where(x[second] <= x[first], second, first)
                if x[smaller].max() > CANCEL_UPPER_BOUND:
                    upper = self._upper.copy()
                    upper[smaller] = CANCEL_UPPER_BOUND
                    x = self._qp(rhs, upper, True)
            out[f] = x
            self._w_prev = x
        return out

    def finish(self, x_active: np.ndarray) -> np.ndarray:
        """Scatter ``[F, Pa]`` active solutions to all ``P`` poses (inactive = 0) and apply
        the model's multipliers and offsets -> ``[F, P]``."""
        prob = self.problem
        x_active = np.atleast_2d(x_active)
        w = np.zeros((x_active.shape[0], prob.num_poses))
        w[:, prob.active] = x_active
        return w * prob.multipliers + prob.offsets

    def solve(self, atd: np.ndarray) -> np.ndarray:
        """``[F, Pa]`` rows of ``Aᵀd`` -> ``[F, P]`` weights (npz pose order)."""
        return self.finish(self.solve_active(atd))

    def solve_poses(self, poses: np.ndarray) -> np.ndarray:
        """Full target poses ``[F, N*3]`` -> ``[F, P]`` weights (the explicit path)."""
        return self.solve(self.problem.project(poses))
