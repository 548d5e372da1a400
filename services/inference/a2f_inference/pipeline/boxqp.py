"""Box-constrained quadratic programs: ``min 1/2 xᵀMx - rᵀx`` subject to ``0 <= x <= ub``.

* :func:`solve_box_qp_reference`: SciPy's bounded-variable least squares (``lsq_linear``,
  ``method="bvls"``) on the Cholesky factor of ``M`` -- slow, used to validate;
* :func:`solve_box_qp`: block principal pivoting (full exchange with Murty's single-exchange
  fallback, so it terminates) on the small dense ``P x P`` system, warm-started from the
  previous frame's active set. It is exact (KKT conditions hold to the tolerance), not an
  iterative approximation, and typically needs one or two linear solves per frame;
* :func:`solve_box_qp_many`: the same pivoting for ``K`` problems at once, each step one
  batched product (inverses of ``M_FF`` come from a store shared by every stream of the
  problem, :class:`FreeSetCache`); :func:`solve_box_qp` is its one-row case.

A variable's state in the warm start is :data:`FREE`, :data:`AT_LOWER` or :data:`AT_UPPER`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import lsq_linear

logger = logging.getLogger(__name__)

#: Solver tolerance (spec: BVLS tolerance 1e-10), relative to the problem's scale.
SOLVE_TOLERANCE = 1e-10
#: Warm-start states of a variable: free, at its lower bound (0), at its upper bound.
FREE, AT_LOWER, AT_UPPER = 0, -1, 1

_TINY_BOX = 1e-8


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


class _SlotStore:
    """``n x n`` matrices in one contiguous array, found by a hashable key (oldest evicted
    first), so the matrices of ``K`` rows come out in one gather. Thread-safe."""

    def __init__(self, n: int, max_entries: int) -> None:
        self.n = n
        self.max_entries = max_entries
        self._slots: dict[Hashable, int] = {}
        self._keys: list[Hashable] = []  # slot -> key
        self._store = np.zeros((0, n, n))
        self._next = 0  # next slot to reuse once full
        self._lock = threading.Lock()

    def take(self, keys: list[Hashable], fill: Callable[[int, np.ndarray], None]) -> np.ndarray:
        """``[K, n, n]``: the matrix of each key; ``fill(k, out)`` writes the matrix of
        ``keys[k]`` into the zeroed ``out`` when it is not stored yet."""
        with self._lock:
            get = self._slots.get
            slots = [get(key, -1) for key in keys]
            if min(slots, default=0) < 0:
                busy = {slot for slot in slots if slot >= 0}  # not to be evicted now
                for k, slot in enumerate(slots):
                    if slot < 0:
                        slot = self._slots.get(keys[k], -1)  # a repeat within this call
                        if slot < 0:
                            slot = self._allocate(keys[k], busy)
                            fill(k, self._store[slot])
                        slots[k] = slot
                        busy.add(slot)
            return self._store[slots]

    def _allocate(self, key: Hashable, busy: set[int]) -> int:
        if len(self._keys) < self.max_entries:
            slot = len(self._keys)
            if slot >= self._store.shape[0]:
                grown = np.zeros((min(self.max_entries, max(16, 2 * slot)), self.n, self.n))
                grown[:slot] = self._store[:slot]
                self._store = grown
            self._keys.append(key)
        else:
            while self._next in busy:
                self._next = (self._next + 1) % self.max_entries
            slot = self._next
            self._next = (slot + 1) % self.max_entries
            del self._slots[self._keys[slot]]
            self._keys[slot] = key
            self._store[slot] = 0.0
        self._slots[key] = slot
        return slot


class FreeSetCache:
    """Inverses of ``M_FF`` keyed by the free set ``F``, shared by every stream solving the
    same problem (consecutive frames mostly reuse a few free sets). Bounded (oldest entries
    go first); thread-safe.

    :meth:`get` computes ``(F, inv(M_FF))``; :meth:`apply` uses the inverse scattered into
    an ``n x n`` slot (zeros outside ``F x F``) of one contiguous store, found by the free set
    packed into a number, so a pivoting step over ``K`` streams costs one gather and one
    batched product.
    """

    def __init__(self, m: np.ndarray, max_entries: int = 1024) -> None:
        self.m = m
        self.n = int(m.shape[0])
        self.scale = max(1.0, float(np.abs(m.diagonal()).max())) if m.size else 1.0
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._store = _SlotStore(self.n, max_entries)
        self._bit_values = 2.0 ** np.arange(self.n) if self.n <= 53 else np.zeros(0)
        #: joint problems this problem leads (see _joint)
        self.joints: dict[tuple[int, ...], Any] = {}

    def get(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = free.tobytes()
        hit = self._entries.get(key)
        if hit is None:
            fi = np.flatnonzero(free)
            hit = (fi, np.linalg.inv(self.m[np.ix_(fi, fi)]))
            if len(self._entries) >= self.max_entries:
                # another thread may evict concurrently
                with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                    del self._entries[next(iter(self._entries))]
            self._entries[key] = hit
        return hit

    def keys(self, free: np.ndarray) -> list[Hashable]:
        """One key per row of ``free``: the bits as an exact float (n <= 53; one product for
        all rows), else the packed bytes."""
        if self.n <= 53:
            keys: list[Hashable] = (free @ self._bit_values).tolist()
            return keys
        return [row.tobytes() for row in np.packbits(free, axis=1)]

    def fill(self, free: np.ndarray, out: np.ndarray) -> None:
        """Write ``inv(M_FF)`` into the zeroed ``[n, n]`` ``out`` (zero outside ``F x F``)."""
        fi, inv = self.get(free)
        out[np.ix_(fi, fi)] = inv

    def apply(self, free: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``x[k] = P_F inv(M_FF) P_Fᵀ b[k]`` for the free set ``free[k]`` of every row:
        ``free`` ``[K, n]`` bool, ``b`` ``[K, n]``; zero outside each row's free set."""
        mats = self._store.take(self.keys(free), lambda k, out: self.fill(free[k], out))
        # one matrix-vector product per row: no dependence on the other rows
        return np.matmul(mats, b[:, :, None])[:, :, 0]


class BlockFreeSets:
    """The free-set inverses of a block-diagonal ``M`` (independent problems side by side),
    applied block by block from each block's own :class:`FreeSetCache` store.

    The blocks' free sets vary independently, so a store keyed by the joint free set sees
    about the product of their variety: with speech-like audio over the full-size stand-in,
    1107 joint keys against 642 skin and 31 tongue keys, and a 512-entry joint store spent
    a fifth of the solve refilling evicted entries (measured: 50 us per frame against 38 us
    block by block, 16 streams x 8 frames).
    """

    def __init__(self, caches: Sequence[FreeSetCache]) -> None:
        self.caches = tuple(caches)
        ends = np.cumsum([c.n for c in self.caches]).tolist()
        self.bounds = list(zip([0, *ends[:-1]], ends, strict=True))
        self.scale = max((c.scale for c in self.caches), default=1.0)

    def apply(self, free: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty_like(b)
        for c, (lo, hi) in zip(self.caches, self.bounds, strict=True):
            out[:, lo:hi] = c.apply(free[:, lo:hi], b[:, lo:hi])
        return out


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
    One row of :func:`solve_box_qp_many`.
    """
    n = rhs.size
    st = np.zeros(n, dtype=np.int8) if state is None else np.asarray(state, dtype=np.int8)
    x, st_new = solve_box_qp_many(m, np.asarray(rhs, dtype=np.float64)[None],
                                  np.asarray(upper, dtype=np.float64)[None], st[None],
                                  FreeSetCache(m) if cache is None else cache, tol)
    return x[0], st_new[0]


def solve_box_qp_many(
    m: np.ndarray,
    rhs: np.ndarray,
    upper: np.ndarray,
    states: np.ndarray,
    cache: FreeSetCache | BlockFreeSets,
    tol: float = SOLVE_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`solve_box_qp` for ``K`` independent problems sharing ``m``, vectorised.

    ``rhs``, ``upper`` and ``states`` are ``[K, n]``; returns ``(x, states)`` of the same
    shape. Every row follows exactly the pivoting rule of :func:`solve_box_qp` (full
    exchange, Murty's single exchange after three non-improving steps); each pivoting step
    is one batched product over the rows not yet optimal, so the Python cost of a step is
    paid once for all of them rather than per row. The first step is the warm-start check:
    rows whose previous partition is still optimal are done after it.
    """
    k, n = rhs.shape
    st = np.array(states, dtype=np.int8, copy=True)
    if n == 0 or k == 0:
        return np.zeros((k, n)), st
    best = np.full(k, n + 1)
    backups = np.full(k, 3)
    u_tol = upper + tol
    gtol = tol * np.maximum(cache.scale, np.abs(rhs).max(axis=1))[:, None]
    # After the first step only the rows still at work go on (compressed once). From then on
    # every one of them takes part in every step: a row that became optimal keeps its
    # partition (nothing to flip), so each step gives it the same x again, and the last
    # step's x holds the answer of every row.
    x_all: np.ndarray | None = None  # results of all rows once some are set aside
    st_all = st
    rows = np.arange(k)
    count = np.zeros(k, dtype=np.intp)
    x = np.zeros((k, n))
    for step in range(10 * n + 20):
        at_upper = st == AT_UPPER
        # products are per row (never a K-row GEMM, whose rounding may depend on K): a
        # stream's result must not depend on which other streams share the step
        if at_upper.any():
            x0 = np.where(at_upper, upper, 0.0)
            x = cache.apply(st == FREE, rhs - _rowwise(m, x0))
            x += x0
        else:
            x = cache.apply(st == FREE, rhs)
        g = _rowwise(m, x)
        g -= rhs
        # a bound variable sits exactly on its bound, so only free ones can leave the box;
        # the gradient must point out of the box at a bound (st * g <= gtol)
        g *= st
        bad = (x < -tol) | (x > u_tol) | (g > gtol)
        count = np.count_nonzero(bad, axis=1)
        if not count.any():
            np.clip(x, 0.0, upper, out=x)
            if x_all is None:
                return x, st
            x_all[rows] = x
            st_all[rows] = st
            return x_all, st_all
        if step == 0 and not count.all():  # set the optimal rows aside
            x_all = np.clip(x, 0.0, upper)
            st_all = st.copy()
            keep = count > 0
            rows = np.flatnonzero(keep)
            st, rhs, upper, u_tol, gtol, x, bad, count, best, backups = (
                st[keep], rhs[keep], upper[keep], u_tol[keep], gtol[keep], x[keep], bad[keep],
                count[keep], best[keep], backups[keep])  # fmt: skip
        # Murty's safeguard: full exchange while the number of violations improves or
        # within 3 steps of the last improvement, then single exchange
        improved = count < best
        back = backups
        best = np.where(improved, count, best)
        backups = np.where(improved, 3, np.where(back > 0, back - 1, back))
        if step >= 4:  # a single exchange needs 4 steps without improvement first
            single = ~improved & (back <= 0) & (count > 0)
            if single.any():  # only the last violating variable changes side
                last = n - 1 - np.argmax(bad[single, ::-1], axis=1)
                one = np.zeros((int(single.sum()), n), dtype=bool)
                one[np.arange(one.shape[0]), last] = True
                bad[single] = one
        flipped = np.where(st == FREE, np.where(x < 0.0, AT_LOWER, AT_UPPER), FREE)
        st = np.where(bad, flipped, st).astype(np.int8)
    if x_all is None:
        x_all, st_all = np.clip(x, 0.0, upper), st
    else:
        x_all[rows] = np.clip(x, 0.0, upper)
        st_all[rows] = st
    failed = np.flatnonzero(count)
    logger.warning("box QP pivoting did not converge (n=%d) for %d of %d problems; using the "
                   "reference solver for them", n, failed.size, k)
    for j in failed:
        xr = solve_box_qp_reference(m, rhs[j], upper[j], tol)
        x_all[rows[j]] = xr
        st_all[rows[j]] = np.where(xr <= tol, AT_LOWER,
                                   np.where(xr >= upper[j] - tol, AT_UPPER, FREE)).astype(np.int8)
    return x_all, st_all


def _rowwise(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``M @ x[k]`` for every row ``k`` of ``x``, one matrix-vector product each."""
    return np.matmul(m, x[:, :, None])[:, :, 0]
