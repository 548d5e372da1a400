"""Per-stream post-processing: network output rows -> poses -> blendshape weights.

Implements section 3 of the model-format reference and feeds section 4 (:mod:`.solve`).

Row layouts (sizes always from the model folder):

* regression ``result`` rows: ``[skin PCA coefficients, tongue PCA coefficients, jaw, eyes]``;
* diffusion ``prediction`` rows: ``[skin deltas, tongue deltas, jaw, eyes]``.

Two paths produce the same weights:

* the **explicit path** (:meth:`FramePostprocessor.poses` then a solve of the full pose)
  builds every vertex of the skin pose per frame -- simple, slow, used to validate;
* the **projected path** (:meth:`FramePostprocessor.process`): everything from the network
  row to ``Aᵀd`` is affine per frame, and the two smoothing filters are linear and
  time-invariant, so the rows are projected once onto the solve's ``P`` active poses, split
  by the face mask (``Ku = Aᵀ diag(1-mask) Bᵀ`` and ``Kl = Aᵀ diag(mask) Bᵀ``, with ``B`` the
  PCA basis for regression and the identity for diffusion), and the upper/lower filters run on
  those ``P``-vectors. Per frame this costs ``2P x S`` (regression) or ``2P x 72006``
  (diffusion) multiply-adds, then a ``P x P`` bounded solve. The projection matrices depend
  only on the identity and the face mask parameters; they are cached (LRU) so opening a
  stream with the same parameters is cheap, and the strengths/offsets are applied as scalars.

Filters: two cascaded first-order exponential smoothers (a 2nd-order filter) per face half,
``alpha = 1 - 0.5 ** (dt / smoothing)`` with ``dt = 1 / fps``; ``smoothing == 0`` passes the
input through; the first frame seeds both stages. Since the first frame seeds the state, an
affine map commutes with the filter, which makes the projected path exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from a2f_volume.errors import InvalidArgumentError
from a2f_volume.model_folder import (
    ARKIT_SKIN_NPZ_KEYS,
    TONGUE_NAMES,
    BlendshapeSet,
    Identity,
    ModelFolder,
)

from .blas import limit_blas_threads
from .params import OUTPUT_BLENDSHAPE_NAMES, BlendshapeParamsNim, FaceParams
from .pose import eye_rotations, face_mask, jaw_transforms, rigid_fit, saccade_index
from .projection import (
    PROJECTION_CACHE_SIZE,
    SkinProjection,
    TongueProjection,
    projection_cache,
    skin_projection,
    source_rows,
    tongue_projection,
)
from .row_layout import RowLayout
from .smoothing import SecondOrderSmoother, smooth_streams, smoothing_alpha
from .solve import BlendshapeSolver, problem_for, solve_joint_padded

logger = logging.getLogger(__name__)

__all__ = [
    "NUM_OUTPUT_WEIGHTS", "PROJECTION_CACHE_SIZE", "FramePostprocessor", "PoseFrames",
    "RowLayout", "SecondOrderSmoother", "SkinProjection", "TongueProjection", "eye_rotations",
    "face_mask", "jaw_transforms", "limit_blas_threads", "process_streams",
    "process_streams_projected", "rigid_fit", "saccade_index", "skin_projection",
    "smoothing_alpha", "tongue_projection",
]  # fmt: skip

#: Weights per output frame: 52 skin then 16 tongue (NIM order).
NUM_OUTPUT_WEIGHTS = len(OUTPUT_BLENDSHAPE_NAMES)
#: The projection cache (:mod:`.projection`), under its former name.
_projections = projection_cache


# --------------------------------------------------------------------------------------
# building blocks


def _output_index(bs: BlendshapeSet, names: tuple[str, ...], base: int) -> np.ndarray:
    """Output column (0..67) of each pose of ``bs`` (npz order)."""
    return np.array([base + names.index(p) for p in bs.pose_names], dtype=np.int64)


# --------------------------------------------------------------------------------------
# the per-stream object


@dataclass(frozen=True)
class PoseFrames:
    """Explicit per-frame geometry (the explicit path's intermediate)."""

    skin: np.ndarray  # float64 [F, V*3]
    tongue: np.ndarray  # float64 [F, T*3]
    jaw: np.ndarray  # float64 [F, 4, 4]
    eyes: np.ndarray  # float64 [F, 4]


class FramePostprocessor:
    """Network rows of one stream -> 68 blendshape weights per frame (stateful).

    Keeps the smoothing filters' state and the solver's ``w_prev``; feed frames in order.
    Construction is cheap once the projections for (identity, mask level, mask softness) are
    cached; the first stream of a configuration builds them (a fraction of a second for a
    full-size model).
    """

    def __init__(
        self,
        model: ModelFolder,
        identity: Identity,
        face: FaceParams,
        bs: BlendshapeParamsNim | None = None,
        fps: float = 30.0,
        *,
        fast: bool = True,
    ) -> None:
        if not fps > 0:
            raise InvalidArgumentError(f"frame rate {fps!r} must be > 0")
        self.model = model
        self.identity = identity
        self.face = face
        self.bs = bs or BlendshapeParamsNim()
        self.fps = float(fps)
        self.layout = RowLayout.of(model)
        self.dt_s = 1.0 / self.fps
        self._skin_prob = problem_for(identity.skin)
        self._tongue_prob = problem_for(identity.tongue)
        self._skin_proj = skin_projection(identity, face.face_mask_level, face.face_mask_softness)
        self._tongue_proj = tongue_projection(identity)
        self._skin_solver = BlendshapeSolver(self._skin_prob, fast=fast)
        self._tongue_solver = BlendshapeSolver(self._tongue_prob, fast=fast)
        self._upper = SecondOrderSmoother(face.upper_face_smoothing, self.dt_s)
        self._lower = SecondOrderSmoother(face.lower_face_smoothing, self.dt_s)
        # explicit-path filters (vertex space), separate state
        self._upper_x = SecondOrderSmoother(face.upper_face_smoothing, self.dt_s)
        self._lower_x = SecondOrderSmoother(face.lower_face_smoothing, self.dt_s)
        self._skin_cols = _output_index(identity.skin, ARKIT_SKIN_NPZ_KEYS, 0)
        self._tongue_cols = _output_index(identity.tongue, TONGUE_NAMES, len(ARKIT_SKIN_NPZ_KEYS))
        self._mult = np.asarray(self.bs.multipliers, dtype=np.float64)
        self._offs = np.asarray(self.bs.offsets, dtype=np.float64)
        f = face
        e_coef = -f.eyelid_open_offset + f.blink_offset * f.blink_strength
        sp = self._skin_proj
        self._skin_const = (
            sp.base
            + f.upper_face_strength * (e_coef * sp.eye_upper + f.lip_open_offset * sp.lip_upper)
            + f.lower_face_strength * (e_coef * sp.eye_lower + f.lip_open_offset * sp.lip_lower)
        )
        tp = self._tongue_proj
        self._tongue_const = (
            tp.base + f.tongue_height_offset * tp.height + f.tongue_depth_offset * tp.depth
        )
        self._mask3: np.ndarray | None = None
        # joint solve variables (active skin poses, then active tongue poses) -> output
        sk, tg = self._skin_prob, self._tongue_prob
        self._joint_cols = np.concatenate([self._skin_cols[sk.active],
                                           self._tongue_cols[tg.active]])
        self._joint_scale = np.concatenate([sk.multipliers[sk.active],
                                            tg.multipliers[tg.active]])
        self._base_row = np.zeros(NUM_OUTPUT_WEIGHTS)  # the model's offsets, every pose
        self._base_row[self._skin_cols] = sk.offsets
        self._base_row[self._tongue_cols] = tg.offsets
        #: streams with equal keys are post-processed together (see process_streams)
        self._group_key = (id(self._skin_proj), id(self._tongue_proj), self.layout.size,
                           self._upper.alpha, self._lower.alpha)

    def reset(self) -> None:
        """Back to stream start (filters unseeded, ``w_prev = 0``)."""
        for filt in (self._upper, self._lower, self._upper_x, self._lower_x):
            filt.reset()
        self._skin_solver.reset()
        self._tongue_solver.reset()

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        r = np.asarray(rows)
        if r.ndim == 1:
            r = r[None, :]
        if r.ndim != 2 or r.shape[1] != self.layout.size:
            raise InvalidArgumentError(
                f"network rows of shape {list(np.shape(rows))}; "
                f"expected [frames, {self.layout.size}]"
            )
        return r

    # projected path ---------------------------------------------------------------------

    def skin_atd(self, rows: np.ndarray) -> np.ndarray:
        """``[F, Pa]`` skin ``Aᵀd`` for the frames (advances the filters)."""
        r = self._rows(rows)
        pa = self._skin_prob.num_active
        sp = self._skin_proj
        y = source_rows(r, self.layout.skin, sp.cols) @ sp.kt
        y = y.astype(np.float64)
        f = self.face
        up = self._upper(y[:, :pa])
        low = self._lower(y[:, pa:])
        return self._skin_const + f.skin_strength * (
            f.upper_face_strength * up + f.lower_face_strength * low
        )

    def tongue_atd(self, rows: np.ndarray) -> np.ndarray:
        """``[F, Pa_tongue]`` tongue ``Aᵀd`` for the frames."""
        r = self._rows(rows)
        tp = self._tongue_proj
        y = source_rows(r, self.layout.tongue, tp.cols) @ tp.kt
        return self._tongue_const + self.face.tongue_strength * y.astype(np.float64)

    def _output(self, skin_w: np.ndarray, tongue_w: np.ndarray) -> np.ndarray:
        out = np.zeros((skin_w.shape[0], NUM_OUTPUT_WEIGHTS))
        out[:, self._skin_cols] = skin_w
        out[:, self._tongue_cols] = tongue_w
        return self._nim_map(out)

    def _nim_map(self, out: np.ndarray) -> np.ndarray:
        """``[F, 68]`` weights after the model's maps -> the stream's NIM multipliers and
        offsets, optional clamping, float32."""
        if not self.bs.is_identity:
            out = out * self._mult + self._offs
            if self.bs.enable_clamping:
                np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32)

    def process(self, rows: np.ndarray, times_s: np.ndarray | None = None) -> np.ndarray:
        """``[F, R]`` network rows (frames in order) -> ``[F, 68]`` float32 weights
        (52 skin weights in NIM order, then 16 tongue weights). ``times_s`` is accepted for
        symmetry with :meth:`eye_rotations` and not needed for the weights."""
        return process_streams([self], [rows])[0]

    def eye_rotations(self, rows: np.ndarray, times_s: np.ndarray) -> np.ndarray:
        """``[F, 4]`` eye rotations (rX, rY, lX, lY) with offsets and saccades."""
        r = self._rows(rows)
        return eye_rotations(r[:, self.layout.eyes], times_s, self.face, self.identity.saccade)

    def jaw_transforms(self, rows: np.ndarray) -> np.ndarray:
        """``[F, 4, 4]`` lower-teeth rigid transforms."""
        r = self._rows(rows)
        return jaw_transforms(r[:, self.layout.jaw], self.identity.jaw_neutral, self.face)

    # explicit path ----------------------------------------------------------------------

    def poses(self, rows: np.ndarray, times_s: np.ndarray) -> PoseFrames:
        """The full geometry per frame, vertex by vertex (explicit path; own filter state)."""
        r = self._rows(rows).astype(np.float64)
        ident, f = self.identity, self.face
        skin_src = r[:, self.layout.skin]
        tongue_src = r[:, self.layout.tongue]
        delta = (
            skin_src @ ident.skin_pca.astype(np.float64) if ident.skin_pca is not None else skin_src
        )
        e = (
            ident.eye_close_delta.astype(np.float64)
            * (-f.eyelid_open_offset + f.blink_offset * f.blink_strength)
            + ident.lip_open_delta.astype(np.float64) * f.lip_open_offset
        )
        rr = f.skin_strength * delta + e
        up = self._upper_x(rr)
        low = self._lower_x(rr)
        if self._mask3 is None:
            self._mask3 = np.repeat(
                face_mask(ident.skin_neutral, f.face_mask_level, f.face_mask_softness), 3
            )
        m3 = self._mask3
        skin = (
            ident.skin_neutral.astype(np.float64)
            + up * f.upper_face_strength * (1.0 - m3)
            + low * f.lower_face_strength * m3
        )
        tdelta = (
            tongue_src @ ident.tongue_pca.astype(np.float64)
            if ident.tongue_pca is not None
            else tongue_src
        )
        tongue = ident.tongue_neutral.astype(np.float64) + tdelta * f.tongue_strength
        tongue = tongue.reshape(len(r), -1, 3)
        tongue[:, :, 1] += f.tongue_height_offset
        tongue[:, :, 2] += f.tongue_depth_offset
        return PoseFrames(
            skin=skin,
            tongue=tongue.reshape(len(r), -1),
            jaw=jaw_transforms(r[:, self.layout.jaw], ident.jaw_neutral, f),
            eyes=eye_rotations(r[:, self.layout.eyes], times_s, f, ident.saccade),
        )

    def process_explicit(self, rows: np.ndarray, times_s: np.ndarray) -> np.ndarray:
        """Same output as :meth:`process`, via full poses (slow; for validation). Uses the
        solvers' state, so do not mix with :meth:`process` on one object."""
        p = self.poses(rows, times_s)
        skin_w = self._skin_solver.solve_poses(p.skin)
        tongue_w = self._tongue_solver.solve_poses(p.tongue)
        return self._output(skin_w, tongue_w)


def process_streams(pps: Sequence[FramePostprocessor], rows: Sequence[np.ndarray]
                    ) -> list[np.ndarray]:
    """:meth:`FramePostprocessor.process` for several streams at once: ``rows[i]`` are the
    next network rows of ``pps[i]`` (a stream appears at most once).

    Streams with the same projections and filter rates are processed together: the
    smoothing filters run over all of them at once
    (each stream with its own state), and the solves run vectorised frame by frame
    (:func:`~.solve.solve_streams_blocks`, skin and tongue side by side). This removes most
    of the per-stream and per-frame Python cost when a batch holds many streams; each
    stream's result is the same as from its own call.
    """
    checked = [pp._rows(r) for pp, r in zip(pps, rows, strict=True)]
    return _by_group(pps, [r.shape[0] for r in checked], lambda members: _process_group(
        [pps[i] for i in members], [checked[i] for i in members]))


def process_streams_projected(pps: Sequence[FramePostprocessor], skin: Sequence[np.ndarray],
                              tongue: Sequence[np.ndarray]) -> list[np.ndarray]:
    """:func:`process_streams` from the projections a serving graph outputs (see
    ``a2f_engine.serving_graph``) instead of the network rows: ``skin[i]`` ``[F, 2 Pa]``
    (upper then lower half onto stream ``i``'s ``Pa`` active skin poses), ``tongue[i]``
    ``[F, Pt]``. Smoothers, strengths, offsets and the solve are the host path's."""
    for pp, s, t in zip(pps, skin, tongue, strict=True):
        pa, pt = pp._skin_prob.num_active, pp._tongue_prob.num_active
        if s.ndim != 2 or s.shape[1] != 2 * pa or t.shape != (s.shape[0], pt):
            raise InvalidArgumentError(f"projections of shape {list(s.shape)} / "
                                       f"{list(t.shape)}; expected [F, {2 * pa}] / [F, {pt}]")

    def group(members: list[int]) -> list[np.ndarray]:
        counts = [skin[i].shape[0] for i in members]
        sy = np.zeros((len(members), max(counts), skin[members[0]].shape[1]))
        ty = np.zeros((len(members), max(counts), tongue[members[0]].shape[1]))
        for j, (i, c) in enumerate(zip(members, counts, strict=True)):
            sy[j, :c], ty[j, :c] = skin[i], tongue[i]
        return _solve_group([pps[i] for i in members], sy, ty, counts)

    return _by_group(pps, [s.shape[0] for s in skin], group)


def _by_group(pps: Sequence[FramePostprocessor], counts: list[int],
              run: Callable[[list[int]], list[np.ndarray]]) -> list[np.ndarray]:
    """Weights of every stream: ``run(members)`` per group of streams with frames that
    share projections and filter rates; streams without frames get none."""
    if len({id(pp) for pp in pps}) != len(pps):
        raise ValueError("process_streams: a post-processor appears twice")
    out = [np.zeros((0, NUM_OUTPUT_WEIGHTS), dtype=np.float32)] * len(pps)
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, (pp, c) in enumerate(zip(pps, counts, strict=True)):
        if c > 0:
            groups.setdefault(pp._group_key, []).append(i)
    for members in groups.values():
        for i, w in zip(members, run(members), strict=True):
            out[i] = w
    return out


def _process_group(pps: list[FramePostprocessor], rows: list[np.ndarray]) -> list[np.ndarray]:
    """:func:`process_streams` for streams sharing projections and filter rates."""
    p0 = pps[0]
    sp, tp, lay = p0._skin_proj, p0._tongue_proj, p0.layout
    counts = [r.shape[0] for r in rows]
    k, fmax = len(rows), max(counts)
    # rows -> projections, padded to [K, Fmax, .]; one product per stream, as a product
    # over the rows of several streams may round differently with their number
    skin_y = np.zeros((k, fmax, sp.kt.shape[1]))
    tongue_y = np.zeros((k, fmax, tp.kt.shape[1]))
    for j, (r, c) in enumerate(zip(rows, counts, strict=True)):
        skin_y[j, :c] = source_rows(r, lay.skin, sp.cols) @ sp.kt
        tongue_y[j, :c] = source_rows(r, lay.tongue, tp.cols) @ tp.kt
    return _solve_group(pps, skin_y, tongue_y, counts)


def _solve_group(pps: list[FramePostprocessor], skin_y: np.ndarray, tongue_y: np.ndarray,
                 counts: list[int]) -> list[np.ndarray]:
    """Projections ``[K, Fmax, 2 Pa]`` / ``[K, Fmax, Pt]`` of streams sharing projections and
    filter rates -> their weights (smoothers, constants, strengths, solve, output maps)."""
    p0 = pps[0]
    pa = p0._skin_prob.num_active
    k, fmax = skin_y.shape[0], skin_y.shape[1]
    up = smooth_streams([pp._upper for pp in pps], skin_y[:, :, :pa], counts)
    low = smooth_streams([pp._lower for pp in pps], skin_y[:, :, pa:], counts)
    # Aᵀd of skin and tongue side by side, per-stream constants and strengths
    def col(values: list[float]) -> np.ndarray:
        return np.asarray(values)[:, None, None]

    faces = [pp.face for pp in pps]
    atd = np.empty((k, fmax, pa + tongue_y.shape[2]))
    atd[:, :, :pa] = np.stack([pp._skin_const for pp in pps])[:, None, :] + col(
        [f.skin_strength for f in faces]) * (col([f.upper_face_strength for f in faces]) * up
                                             + col([f.lower_face_strength for f in faces]) * low)
    atd[:, :, pa:] = (np.stack([pp._tongue_const for pp in pps])[:, None, :]
                      + col([f.tongue_strength for f in faces]) * tongue_y)
    res = solve_joint_padded([(pp._skin_solver, pp._tongue_solver) for pp in pps], atd,
                             np.asarray(counts))
    # active solutions -> 68 output weights (model multipliers/offsets, then the stream's)
    w = np.empty((k, fmax, NUM_OUTPUT_WEIGHTS))
    w[:] = p0._base_row
    w[:, :, p0._joint_cols] += res * p0._joint_scale
    return [pp._nim_map(w[j, : counts[j]]) for j, pp in enumerate(pps)]
