"""Projections of network rows onto the blendshape solve's active poses (cached per identity
and face mask); the host path of :mod:`.postprocess` (a serving graph computes the same
products inside the engine)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from a2f_volume.model_folder import Identity

from .pose import face_mask
from .solve import ObjectKeyedLRU, SolveProblem, problem_for

logger = logging.getLogger(__name__)

#: Projection cache entries (diffusion entries are ~2 * P * 72006 float32 each).
PROJECTION_CACHE_SIZE = 8
#: Projection entries below this fraction of the largest one are dropped (see _no_subnormals).
_NEGLIGIBLE = 1e-10


# --------------------------------------------------------------------------------------
# projections (cached)


@dataclass(frozen=True)
class SkinProjection:
    """Skin rows -> ``Aᵀd`` pieces for one identity and face mask (level, softness).

    ``kt`` is ``[Ku; Kl]ᵀ`` (``[D, 2 Pa]`` float32, contiguous); ``eye_*``/``lip_*`` are
    ``Aᵀ`` of the masked eye-close/lip-open deltas; ``base`` is ``Aᵀ(neutral_skin - bs_neutral)``.
    """

    kt: np.ndarray
    cols: np.ndarray | None  # source columns ``kt`` rows refer to (None: all)
    eye_upper: np.ndarray
    eye_lower: np.ndarray
    lip_upper: np.ndarray
    lip_lower: np.ndarray
    base: np.ndarray


@dataclass(frozen=True)
class TongueProjection:
    """Tongue rows -> ``Aᵀd`` pieces: ``kt`` [D, Pa], offsets' and neutral's projections."""

    kt: np.ndarray
    cols: np.ndarray | None
    height: np.ndarray
    depth: np.ndarray
    base: np.ndarray


projection_cache: ObjectKeyedLRU[SkinProjection | TongueProjection] = ObjectKeyedLRU(
    PROJECTION_CACHE_SIZE
)


def _weighted_at(prob: SolveProblem, weights: np.ndarray, size: int) -> np.ndarray:
    """``Aᵀ diag(weights)`` scattered to full width ``[Pa, size]`` (float32)."""
    w = np.zeros((prob.num_active, size), dtype=np.float32)
    w[:, prob.rows] = _no_subnormals(prob.a.astype(np.float64) * weights[:, None]).T
    return w


def _no_subnormals(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 with negligible values (below ``1e-10`` of the largest magnitude, or
    below float32's normal range) set to 0. The face mask's sigmoid tails and the pose
    deltas' far fields hold values like 1e-35: multiplied by a network output they give
    subnormal products, which make the per-frame matrix product ~100x slower."""
    out = np.asarray(x, dtype=np.float32)
    peak = float(np.abs(out).max()) if out.size else 0.0
    floor = max(float(np.finfo(np.float32).tiny), peak * _NEGLIGIBLE)
    out[np.abs(out) < floor] = 0.0
    return out


def _project_basis(w: np.ndarray, basis: np.ndarray | None, chunk: int = 16384) -> np.ndarray:
    """``W Bᵀ`` accumulated in float64 over column chunks (``basis=None``: ``W`` itself)."""
    if basis is None:
        return w
    out = np.zeros((w.shape[0], basis.shape[0]))
    for c in range(0, w.shape[1], chunk):
        out += (w[:, c : c + chunk] @ basis[:, c : c + chunk].T).astype(np.float64)
    return _no_subnormals(out)


def _support(k: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``kt`` (transposed, contiguous) restricted to the source columns it uses: values
    outside the frontal mask or untouched by every pose need not be multiplied."""
    kt = _no_subnormals(k).T
    used = np.flatnonzero(np.any(kt != 0.0, axis=1))
    if used.size > 0.9 * kt.shape[0]:
        return np.ascontiguousarray(kt), None
    return np.ascontiguousarray(kt[used]), used


def source_rows(rows: np.ndarray, part: slice, cols: np.ndarray | None) -> np.ndarray:
    src = rows[:, part]
    return np.ascontiguousarray(src if cols is None else src[:, cols], dtype=np.float32)


def skin_projection(identity: Identity, level: float, softness: float) -> SkinProjection:
    """The cached :class:`SkinProjection` for ``identity`` and the face mask parameters."""

    def build() -> SkinProjection:
        t0 = time.perf_counter()
        prob = problem_for(identity.skin)
        size = identity.skin_neutral.size
        m3 = np.repeat(face_mask(identity.skin_neutral, level, softness), 3)[prob.rows]
        a64 = prob.a.astype(np.float64)
        wu = _weighted_at(prob, 1.0 - m3, size)
        wl = _weighted_at(prob, m3, size)
        k = np.concatenate(
            [_project_basis(wu, identity.skin_pca), _project_basis(wl, identity.skin_pca)]
        )
        eye = identity.eye_close_delta[prob.rows].astype(np.float64)
        lip = identity.lip_open_delta[prob.rows].astype(np.float64)
        kt, cols = _support(k)
        neutral_gap = identity.skin_neutral[prob.rows].astype(np.float64) - prob.neutral
        proj = SkinProjection(
            kt=kt, cols=cols,
            eye_upper=a64.T @ ((1.0 - m3) * eye), eye_lower=a64.T @ (m3 * eye),
            lip_upper=a64.T @ ((1.0 - m3) * lip), lip_lower=a64.T @ (m3 * lip),
            base=a64.T @ neutral_gap,
        )  # fmt: skip
        logger.info(
            "built skin projection for identity %s (mask level %g, softness %g): %d poses x 2 "
            "halves over %d of %d source values in %.2f s",
            identity.name, level, softness, prob.num_active, kt.shape[0], k.shape[1],
            time.perf_counter() - t0,
        )  # fmt: skip
        return proj

    result = projection_cache.get(identity, ("skin", float(level), float(softness)), build)
    assert isinstance(result, SkinProjection)
    return result


def tongue_projection(identity: Identity) -> TongueProjection:
    """The cached :class:`TongueProjection` for ``identity``."""

    def build() -> TongueProjection:
        prob = problem_for(identity.tongue)
        size = identity.tongue_neutral.size
        w = _weighted_at(prob, np.ones(prob.rows.size), size)
        kt, cols = _support(_project_basis(w, identity.tongue_pca))
        a64 = prob.a.astype(np.float64)
        axis = prob.rows % 3
        return TongueProjection(
            kt=kt,
            cols=cols,
            height=a64.T @ (axis == 1).astype(np.float64),
            depth=a64.T @ (axis == 2).astype(np.float64),
            base=a64.T @ (identity.tongue_neutral[prob.rows].astype(np.float64) - prob.neutral),
        )

    result = projection_cache.get(identity, ("tongue",), build)
    assert isinstance(result, TongueProjection)
    return result


