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

The box-constrained quadratic programs are solved by :mod:`~a2f_inference.pipeline.boxqp`
(a reference BVLS, and an exact block principal pivoting, vectorised over many streams).

:class:`BlendshapeSolver` keeps the per-stream state (``w_prev`` and the warm start).
:func:`solve_streams_blocks` solves the frames of many streams: frame ``f`` of every stream
in one vectorised step, each stream's skin and tongue side by side as one block-diagonal
problem; the cancel re-solve starts from the frame's own partition with the capped weights at
their new bound. Products are per row, so a stream's result does not depend on the other
streams of the batch.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from a2f_inference.pipeline.boxqp import (
    AT_UPPER,
    FREE,
    SOLVE_TOLERANCE,
    BlockFreeSets,
    FreeSetCache,
    solve_box_qp,
    solve_box_qp_many,
    solve_box_qp_reference,
)
from a2f_volume.model_folder import BlendshapeSet

logger = logging.getLogger(__name__)

__all__ = [
    "CANCEL_UPPER_BOUND", "SOLVE_TOLERANCE", "BlendshapeSolver", "FreeSetCache",
    "ObjectKeyedLRU", "SolveProblem", "build_problem", "problem_for", "solve_box_qp",
    "solve_box_qp_many", "solve_box_qp_reference", "solve_joint_padded",
    "solve_streams_active", "solve_streams_blocks",
]  # fmt: skip

#: Upper bound given to the smaller weight of a cancel pair.
CANCEL_UPPER_BOUND = 1e-10


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
# per-stream solver


class BlendshapeSolver:
    """Per-stream solve over one blendshape set; keeps ``w_prev`` and the warm start.

    ``fast=False`` uses the reference BVLS for every frame (for validation only). Streams of
    the same blendshape set are solved together, frame by frame, by
    :func:`solve_streams_blocks`;
    :meth:`solve_active` is that for one stream.
    """

    def __init__(self, problem: SolveProblem, *, fast: bool = True) -> None:
        self.problem = problem
        self.fast = fast
        pa = problem.num_active
        self._w_prev = np.zeros(pa)
        self._state = np.zeros(pa, dtype=np.int8)  # warm start: last frame's partition

    def reset(self) -> None:
        """Back to stream start (``w_prev = 0``)."""
        self._w_prev[:] = 0.0
        self._state[:] = FREE

    def _solve_reference(self, atd: np.ndarray) -> np.ndarray:
        prob = self.problem
        out = np.empty_like(atd)
        ones = np.ones(prob.num_active)
        pairs = np.asarray(prob.cancel_pairs, dtype=np.intp).reshape(-1, 2)
        first, second = pairs[:, 0], pairs[:, 1]
        for f in range(atd.shape[0]):
            rhs = atd[f] + prob.temporal_rhs * self._w_prev
            x = solve_box_qp_reference(prob.m, rhs, ones)
            if pairs.size:
                smaller = np.where(x[second] <= x[first], second, first)
                if x[smaller].max() > CANCEL_UPPER_BOUND:
                    upper = ones.copy()
                    upper[smaller] = CANCEL_UPPER_BOUND
                    x = solve_box_qp_reference(prob.m, rhs, upper)
            out[f] = x
            self._w_prev = x
        return out

    def solve_active(self, atd: np.ndarray) -> np.ndarray:
        """Raw solutions over the active poses for ``[F, Pa]`` rows of ``Aᵀd`` (frames in
        order); updates ``w_prev``. No multipliers/offsets."""
        return solve_streams_active([self], [atd])[0]

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


def solve_streams_active(solvers: Sequence[BlendshapeSolver], atds: Sequence[np.ndarray]
                         ) -> list[np.ndarray]:
    """Solve consecutive frames of several streams: ``atds[i]`` (``[F_i, Pa]`` rows of
    ``Aᵀd``, frames in order) for ``solvers[i]``; returns the raw active solutions per stream
    and updates each solver's ``w_prev`` and warm start. See :func:`solve_streams_blocks`."""
    out = solve_streams_blocks([[s] for s in solvers], [[a] for a in atds])
    return [o[0] for o in out]


def solve_streams_blocks(solvers: Sequence[Sequence[BlendshapeSolver]],
                         atds: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """Like :func:`solve_streams_active` where each stream has several independent solves
    per frame (its skin and its tongue): ``solvers[i][b]`` solves ``atds[i][b]``
    (``[F_i, Pa_b]``, the same ``F_i`` for every block of a stream).

    Streams whose blocks have the same problems are solved together: frame ``f`` of all of
    them in one vectorised step, their blocks side by side as one block-diagonal problem
    (blocks do not interact, so this is the same solution as solving them one by one, with
    half the steps). Frames of one stream stay sequential, since the temporal term couples
    them. The result of a stream does not depend on which other streams share the call.
    """
    arrays = [[np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in blocks]
              for blocks in atds]
    out: list[list[np.ndarray]] = [[] for _ in arrays]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, blocks in enumerate(solvers):
        if all(s.fast for s in blocks):
            groups.setdefault(tuple(id(s.problem) for s in blocks), []).append(i)
        else:
            out[i] = [s.solve_active(a) if s.fast else s._solve_reference(a)
                      for s, a in zip(blocks, arrays[i], strict=True)]
    for members in groups.values():
        results = _solve_group([solvers[i] for i in members], [arrays[i] for i in members])
        for i, res in zip(members, results, strict=True):
            out[i] = res
    return out


@dataclass(frozen=True)
class _Joint:
    """Several problems side by side as one block-diagonal problem (built once per tuple of
    problems, kept by the first problem's free-set cache)."""

    m: np.ndarray
    cache: FreeSetCache | BlockFreeSets
    temporal: np.ndarray  # T * s per variable
    first: np.ndarray  # cancel pairs, positions in the joint problem
    second: np.ndarray
    bounds: tuple[tuple[int, int], ...]
    problems: tuple[SolveProblem, ...]

    @property
    def n(self) -> int:
        return int(self.m.shape[0])


def _joint(probs: tuple[SolveProblem, ...]) -> _Joint:
    key = tuple(id(p) for p in probs)
    joints = probs[0].free_sets.joints
    hit = joints.get(key)
    if hit is not None and all(a is b for a, b in zip(hit.problems, probs, strict=True)):
        return hit
    ends = np.cumsum([p.num_active for p in probs]).tolist()
    bounds = tuple(zip([0, *ends[:-1]], ends, strict=True))
    n = int(ends[-1])
    if len(probs) == 1:
        m: np.ndarray = probs[0].m
        cache: FreeSetCache | BlockFreeSets = probs[0].free_sets
    else:
        m = np.zeros((n, n))
        for p, (a, b) in zip(probs, bounds, strict=True):
            m[a:b, a:b] = p.m
        cache = BlockFreeSets([p.free_sets for p in probs])
    pairs = np.concatenate([np.asarray(p.cancel_pairs, dtype=np.intp).reshape(-1, 2) + a
                            for p, (a, _) in zip(probs, bounds, strict=True)])
    hit = _Joint(m=m, cache=cache,
                 temporal=np.concatenate([np.full(p.num_active, p.temporal_rhs) for p in probs]),
                 first=pairs[:, 0].copy(), second=pairs[:, 1].copy(), bounds=bounds,
                 problems=probs)
    if len(joints) >= 8:
        joints.clear()
    joints[key] = hit
    return hit


def _solve_group(streams: list[Sequence[BlendshapeSolver]], atds: list[list[np.ndarray]]
                 ) -> list[list[np.ndarray]]:
    joint = _joint(tuple(s.problem for s in streams[0]))
    counts = np.array([blocks[0].shape[0] for blocks in atds])
    k, fmax = len(streams), int(counts.max()) if len(streams) else 0
    atd = np.zeros((k, fmax, joint.n))
    for j, blocks in enumerate(atds):
        for blk, (a, b) in zip(blocks, joint.bounds, strict=True):
            atd[j, : counts[j], a:b] = blk
    res = solve_joint_padded(streams, atd, counts, joint)
    return [[res[j, : counts[j], a:b] for a, b in joint.bounds] for j in range(k)]


def solve_joint_padded(streams: Sequence[Sequence[BlendshapeSolver]], atd: np.ndarray,
                       counts: np.ndarray, joint: _Joint | None = None) -> np.ndarray:
    """The core of :func:`solve_streams_blocks` for streams whose blocks have the same
    problems: ``atd`` ``[K, Fmax, n]`` holds each stream's blocks side by side (rows past
    ``counts[k]`` are padding); returns the raw active solutions in the same layout
    (padding rows 0) and updates the solvers. ``joint``: the streams' joint problem, when the
    caller already has it."""
    if joint is None:
        joint = _joint(tuple(s.problem for s in streams[0]))
    bounds, n = joint.bounds, joint.n
    k = len(streams)
    fmax = int(atd.shape[1])
    res = np.zeros((k, fmax, n))
    if n == 0 or fmax == 0:
        return res
    m, cache, temporal = joint.m, joint.cache, joint.temporal
    first, second = joint.first, joint.second
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")  # longest first: active streams are a prefix
    sorted_atd = atd[order]
    w_prev = np.empty((k, n))
    st = np.empty((k, n), dtype=np.int8)
    for j, i in enumerate(order.tolist()):
        for (a, b), solver in zip(bounds, streams[i], strict=True):
            w_prev[j, a:b] = solver._w_prev
            st[j, a:b] = solver._state
    alive = np.searchsorted(-counts[order], -np.arange(fmax), side="left")  # count > f
    ones = np.ones((k, n))
    for f in range(fmax):
        na = int(alive[f])
        if na == 0:
            break
        rhs = sorted_atd[:na, f] + temporal * w_prev[:na]
        x, st[:na] = solve_box_qp_many(m, rhs, ones[:na], st[:na], cache)
        if first.size:
            # per pair, the smaller weight is capped at CANCEL_UPPER_BOUND and the frame
            # solved again (a block whose pairs are already within the cap gets the same
            # solution again: its optimum satisfies the tighter bounds)
            smaller = np.where(x[:, second] <= x[:, first], second, first)
            need = np.flatnonzero(
                np.take_along_axis(x, smaller, axis=1).max(axis=1) > CANCEL_UPPER_BOUND)
            if need.size:
                upper = np.ones((need.size, n))
                np.put_along_axis(upper, smaller[need], CANCEL_UPPER_BOUND, axis=1)
                # warm start: this frame's partition, capped weights at their new bound
                warm = st[need]
                capped = (upper < 1.0) & (x[need] > CANCEL_UPPER_BOUND)
                warm[capped] = AT_UPPER
                x[need] = solve_box_qp_many(m, rhs[need], upper, warm, cache)[0]
        res[order[:na], f] = x
        w_prev[:na] = x
    for j, i in enumerate(order.tolist()):
        for (a, b), solver in zip(bounds, streams[i], strict=True):
            solver._w_prev = w_prev[j, a:b].copy()
            solver._state = st[j, a:b].copy()
    return res
