"""The serving graph: a model's network plus what post-processing needs from it, as one ONNX.

Post-processing (``a2f_inference.pipeline.postprocess``) uses the network output only
through these products per frame:

* skin: ``upper = Aᵀ diag(1 - mask) d`` and ``lower = Aᵀ diag(mask) d``, the skin delta ``d``
  (diffusion: the prediction's skin values; regression: PCA coefficients x basis) projected
  onto the ``Pa`` active poses ``A`` of the identity's skin blendshapes (rows of its frontal
  mask), split by the face mask ``mask = sigmoid((level - y_norm) / softness)``; the
  smoothers, strengths, offsets and the solve then work on these ``Pa``-vectors;
* tongue: ``Aᵀ d_tongue`` over the tongue blendshapes' active poses (no mask);
* jaw (15 values) and eyes (4 values) as they are.

:func:`compose_serving_graph` writes a graph that computes exactly these, so only they leave
the engine: diffusion keeps the frames ``left_truncate .. left_truncate + center`` of its
prediction (15..44 of 60 for the published model, read from ``network_info.json``), and
each batch item carries its own identity and face mask parameters. TensorRT then runs the
projections on the GPU and ONNX Runtime with its own kernels. Noise (diffusion) comes from
the policy (:mod:`a2f_engine.noise`): a resident ``[1, ...]`` tensor broadcast in the graph
(``constant``), a resident pool mixed per window (``fresh``, source ``pool``) or an in-graph
generator (``fresh``, source ``rng``).

Inputs and outputs (``B`` the batch, ``F`` kept frames, ``Ps``/``Pt`` the largest active skin
/ tongue pose count over the identities; identity ``i`` uses the first ``Pa_i`` columns, the
rest are 0):

==================  =========================  ====================================
name                shape                      notes
==================  =========================  ====================================
(network inputs)    as in network.onnx         except ``noise`` (diffusion)
face_mask_level     [B]                        per item
face_mask_softness  [B]                        per item (>= 1e-12 is used)
constant_noise      [1, S+1, Fw, D]            constant policy; resident
noise_pool          [R, D]                     fresh/pool; resident
noise_rows          [B, 2, S+1, Fw] int64      fresh/pool; per window
noise_mix           [B, S+1, Fw, 2]            fresh/pool; cos, sin per row
skin_upper          [B, F, Ps]                 output
skin_lower          [B, F, Ps]                 output
tongue              [B, F, Pt]                 output
jaw / eyes          [B, F, 15] / [B, F, 4]     output
output_latents      [2, 2, B, 256]             diffusion; unchanged
==================  =========================  ====================================

The composition is described by :class:`ServingGraphInfo`, saved next to the graph as JSON.
Verification against the unmodified ONNX + NumPy products: :mod:`a2f_engine.serving_verify`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from a2f_engine.errors import EngineBuildError
from a2f_engine.noise import (
    DEFAULT_NOISE_SEED,
    DEFAULT_POOL_ROWS,
    FreshSource,
    NoisePolicy,
    check_pool_rows,
    constant_noise,
    noise_pool,
)
from a2f_volume.model_folder import BlendshapeSet, Identity, ModelFolder

logger = logging.getLogger(__name__)

#: Projection entries below this fraction of the largest one are dropped (as post-processing
#: does: far-field values like 1e-35 would give subnormal products, ~100x slower on CPUs).
NEGLIGIBLE = 1e-10
#: Smallest face mask softness the graph divides by.
MIN_SOFTNESS = 1e-12
SERVING_GRAPH_OPSET = 14
OUTPUTS = ("skin_upper", "skin_lower", "tongue", "jaw", "eyes")


@dataclass(frozen=True)
class ServingGraphInfo:
    """What a composed serving graph takes and gives (saved as ``<graph>.json``)."""

    kind: str
    frame_start: int  # first kept frame of the network output
    frames: int  # kept frames per inference
    skin_poses: tuple[int, ...]  # active skin poses per identity (column count used)
    tongue_poses: tuple[int, ...]
    skin_width: int  # Ps
    tongue_width: int  # Pt
    noise: NoisePolicy | None  # None: regression
    fresh_source: FreshSource | None
    noise_seed: int
    pool_rows: int
    noise_shape: tuple[int, ...]  # [S+1, Fw, D] of one item (diffusion), else ()
    inputs: tuple[str, ...]
    resident_inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServingGraphInfo:
        tuples = ("skin_poses", "tongue_poses", "noise_shape", "inputs", "resident_inputs",
                  "outputs")
        values: dict[str, Any] = {k: (tuple(v) if k in tuples else v) for k, v in data.items()}
        return cls(**values)

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ServingGraphInfo:
        return cls.from_json(json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------------------
# projection tables (NumPy, once per model version)


def value_rows(frontal_mask: np.ndarray | None, num_values: int) -> np.ndarray:
    """Flat xyz indices of the vertices in ``frontal_mask`` (all values when ``None``)."""
    if frontal_mask is None:
        return np.arange(num_values, dtype=np.int64)
    v = np.asarray(frontal_mask, dtype=np.int64)
    return (v[:, None] * 3 + np.arange(3, dtype=np.int64)[None, :]).reshape(-1)


def active_matrix(bs: BlendshapeSet) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, A)``: the value rows the solve uses and the active pose deltas on them
    (``[R, Pa]`` float64), as the blendshape solve defines them."""
    active = np.flatnonzero(np.asarray(bs.params.active, dtype=bool))
    rows = value_rows(bs.frontal_mask, bs.neutral.size)
    return rows, bs.deltas[active][:, rows].T.astype(np.float64)


def normalised_y(neutral_skin: np.ndarray) -> np.ndarray:
    """Per flat xyz value: its vertex's neutral y mapped to [0, 1] (the face mask's input)."""
    y = np.asarray(neutral_skin, dtype=np.float64).reshape(-1, 3)[:, 1]
    span = float(y.max() - y.min())
    yn = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    return np.repeat(yn, 3)


def face_mask_values(yn: np.ndarray, level: float, softness: float) -> np.ndarray:
    """``sigmoid((level - yn) / softness)`` (float64), overflow-free."""
    z = (level - yn) / max(softness, MIN_SOFTNESS)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _clean(x: np.ndarray) -> np.ndarray:
    """float32 with negligible entries (below ``NEGLIGIBLE`` of the peak, or subnormal) 0."""
    out = np.asarray(x, dtype=np.float32).copy()
    peak = float(np.abs(out).max()) if out.size else 0.0
    out[np.abs(out) < max(float(np.finfo(np.float32).tiny), peak * NEGLIGIBLE)] = 0.0
    return out


@dataclass(frozen=True)
class ProjectionTables:
    """The constants of the graph's projections, over all identities of a model."""

    skin_cols: np.ndarray  # int64 [U]: source values used by any identity
    skin_a: np.ndarray  # float32 [I, U, Ps]
    skin_yn: np.ndarray  # float32 [I, U]
    skin_basis: np.ndarray | None  # float32 [S, U] (regression), else None
    tongue_cols: np.ndarray | None  # int64 [Ut] (diffusion), None for regression
    tongue_k: np.ndarray  # float32 [I, Ut or S_tongue, Pt]
    skin_poses: tuple[int, ...]
    tongue_poses: tuple[int, ...]


def projection_tables(folder: ModelFolder) -> ProjectionTables:
    """Build :class:`ProjectionTables` for every identity of ``folder``."""
    idents: Sequence[Identity] = folder.identities
    skin = [active_matrix(i.skin) for i in idents]
    tongue = [active_matrix(i.tongue) for i in idents]
    ps = max(a.shape[1] for _, a in skin)
    pt = max(a.shape[1] for _, a in tongue)
    size = idents[0].skin_neutral.size
    # union of the used source values: rows where some identity's A is not negligible
    full = []
    for (rows, a) in skin:
        w = np.zeros((size, ps), dtype=np.float32)
        w[rows, : a.shape[1]] = _clean(a)
        full.append(w)
    used = np.flatnonzero(np.any(np.stack([np.any(w != 0, axis=1) for w in full]), axis=0))
    skin_a = np.stack([w[used] for w in full])
    skin_yn = np.stack([normalised_y(i.skin_neutral)[used] for i in idents]).astype(np.float32)
    basis = None
    if idents[0].skin_pca is not None:
        basis = np.ascontiguousarray(idents[0].skin_pca[:, used], dtype=np.float32)
    tsize = idents[0].tongue_neutral.size
    tongue_cols: np.ndarray | None = None
    if idents[0].tongue_pca is not None:  # regression: fold the PCA basis in
        ks = []
        for ident, (rows, a) in zip(idents, tongue, strict=True):
            assert ident.tongue_pca is not None
            k = np.zeros((ident.tongue_pca.shape[0], pt))
            k[:, : a.shape[1]] = ident.tongue_pca[:, rows].astype(np.float64) @ a
            ks.append(_clean(k))
        tongue_k = np.stack(ks)
    else:
        tfull = []
        for rows, a in tongue:
            w = np.zeros((tsize, pt), dtype=np.float32)
            w[rows, : a.shape[1]] = _clean(a)
            tfull.append(w)
        tongue_cols = np.flatnonzero(
            np.any(np.stack([np.any(w != 0, axis=1) for w in tfull]), axis=0))
        tongue_k = np.stack([w[tongue_cols] for w in tfull])
    return ProjectionTables(
        skin_cols=used.astype(np.int64), skin_a=np.ascontiguousarray(skin_a), skin_yn=skin_yn,
        skin_basis=basis, tongue_cols=tongue_cols, tongue_k=np.ascontiguousarray(tongue_k),
        skin_poses=tuple(a.shape[1] for _, a in skin),
        tongue_poses=tuple(a.shape[1] for _, a in tongue))


# --------------------------------------------------------------------------------------
# graph building


class _Nodes:
    def __init__(self, prefix: str, taken: set[str]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._prefix = prefix
        self._taken = taken
        self._n = 0

    def _name(self, base: str) -> str:
        while True:
            self._n += 1
            name = f"{self._prefix}{base}_{self._n}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        name = out if out is not None else self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [name],
                                           name=self._name(f"node_{op_type}"), **attrs))
        return name

    def slice(self, x: str, axis: int, start: int, end: int, out: str | None = None) -> str:
        return self.op("Slice", [x, self.const("start", np.array([start], np.int64)),
                                 self.const("end", np.array([end], np.int64)),
                                 self.const("axis", np.array([axis], np.int64))], out)


def _mask_and_project(g: _Nodes, x: str, a_item: str, yn_item: str, frames: int,
                      level: str, softness: str) -> tuple[str, str]:
    """``x`` [B, F, U] -> (upper, lower) [B, F, P] with the per-item mask."""
    lvl = g.op("Unsqueeze", [level, g.const("ax", np.array([1], np.int64))])  # [B, 1]
    soft = g.op("Max", [softness, g.const("minsoft", np.array(MIN_SOFTNESS, np.float32))])
    soft = g.op("Unsqueeze", [soft, g.const("ax", np.array([1], np.int64))])
    z = g.op("Div", [g.op("Sub", [lvl, yn_item]), soft])  # [B, U]
    half = g.const("half", np.array(0.5, np.float32))
    m = g.op("Mul", [half, g.op("Add", [g.const("one", np.array(1.0, np.float32)),
                                        g.op("Tanh", [g.op("Mul", [half, z])])])])
    m = g.op("Unsqueeze", [m, g.const("ax", np.array([1], np.int64))])  # [B, 1, U]
    lower_in = g.op("Mul", [x, m])
    upper_in = g.op("Mul", [x, g.op("Sub", [g.const("one", np.array(1.0, np.float32)), m])])
    both = g.op("MatMul", [g.op("Concat", [upper_in, lower_in], axis=1), a_item])  # [B, 2F, P]
    return (g.slice(both, 1, 0, frames, "skin_upper"),
            g.slice(both, 1, frames, 2 * frames, "skin_lower"))


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every input is produced before use (stable)."""
    done = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = [n for n in pending if not all(i in done for i in n.input)]
        ready = [n for n in pending if all(i in done for i in n.input)]
        if not ready:
            missing = sorted({i for n in rest for i in n.input if i not in done})[:5]
            raise EngineBuildError(f"serving graph: inputs never produced: {missing}")
        for n in ready:
            ordered.append(n)
            done.update(n.output)
        pending = rest
    return ordered


def _value_info(name: str, shape: Sequence[int | str], elem: int = TensorProto.FLOAT
                ) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def compose_serving_graph(folder: ModelFolder, out_path: str | os.PathLike[str], *,
                          noise: NoisePolicy = "constant", fresh_source: FreshSource = "pool",
                          noise_seed: int = DEFAULT_NOISE_SEED,
                          pool_rows: int = DEFAULT_POOL_ROWS) -> ServingGraphInfo:
    """Write the serving graph of ``folder`` (its ``network.onnx``) to ``out_path`` and its
    :class:`ServingGraphInfo` to ``out_path + ".json"``; returns the info.

    Raises :class:`EngineBuildError` when the network does not have the tensors the model
    format names.
    """
    t0 = time.perf_counter()
    model = onnx.load(os.fspath(folder.onnx_path))
    graph = model.graph
    taken = {n for node in graph.node for n in (*node.input, *node.output)}
    taken |= {i.name for i in graph.initializer} | {i.name for i in graph.input}
    g = _Nodes("sg_", taken)
    tables = projection_tables(folder)
    info_inputs = [i.name for i in graph.input]
    resident: list[str] = []
    new_inputs = [_value_info("face_mask_level", ["batch"]),
                  _value_info("face_mask_softness", ["batch"])]
    outs = {o.name for o in graph.output}
    if folder.diffusion is not None:
        d = folder.diffusion
        for need in ("window", "identity", "noise"):
            if need not in info_inputs:
                raise EngineBuildError(f"{folder.onnx_path}: no input {need!r}")
        if "prediction" not in outs or "output_latents" not in outs:
            raise EngineBuildError(f"{folder.onnx_path}: needs outputs prediction, output_latents")
        noise_in = next(i for i in graph.input if i.name == "noise")
        dims = [x.dim_value for x in noise_in.type.tensor_type.shape.dim]
        noise_shape = (dims[1], dims[2], dims[3])
        if min(noise_shape) <= 0:
            raise EngineBuildError(f"{folder.onnx_path}: noise needs static non-batch axes")
        f0, frames = d.left_truncate, d.center
        pred = "prediction"
        sizes = (d.skin_size, d.tongue_size, d.jaw_size, d.eyes_size)
        kept = g.slice(pred, 1, f0, f0 + frames)  # [B, F, R]
        batch = g.slice(g.op("Shape", ["window"]), 0, 0, 1)
        info_inputs.remove("noise")
        graph.input.remove(noise_in)
        if noise == "constant":
            new_inputs.append(_value_info("constant_noise", [1, *noise_shape]))
            resident.append("constant_noise")
            full = g.op("Concat", [batch, g.const("nshape", np.array(noise_shape, np.int64))],
                        axis=0)
            g.op("Expand", ["constant_noise", full], "noise")
        elif fresh_source == "pool":
            check_pool_rows(pool_rows, noise_shape[0], noise_shape[1])
            new_inputs += [_value_info("noise_pool", [pool_rows, noise_shape[2]]),
                           _value_info("noise_rows", ["batch", 2, *noise_shape[:2]],
                                       TensorProto.INT64),
                           _value_info("noise_mix", ["batch", *noise_shape[:2], 2])]
            resident.append("noise_pool")
            parts = []
            for k in (0, 1):
                r = g.op("Gather", ["noise_rows", g.const("k", np.array(k, np.int64))], axis=1)
                rows = g.op("Gather", ["noise_pool", r], axis=0)  # [B, S, F, D]
                parts.append(g.op("Mul", [g.slice("noise_mix", 3, k, k + 1), rows]))
            g.op("Add", parts, "noise")
        else:
            full = g.op("Concat", [batch, g.const("nshape", np.array(noise_shape, np.int64))],
                        axis=0)
            zeros = g.op("ConstantOfShape", [full],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
            g.op("RandomNormalLike", [zeros], "noise")
        ident = g.op("ArgMax", ["identity"], axis=1, keepdims=0)  # [B]
        ends = np.cumsum(sizes)
        skin = g.slice(kept, 2, 0, int(ends[0]))
        x = g.op("Gather", [skin, g.const("skin_cols", tables.skin_cols)], axis=2)
        tongue_src = g.slice(kept, 2, int(ends[0]), int(ends[1]))
        assert tables.tongue_cols is not None
        tx = g.op("Gather", [tongue_src, g.const("tongue_cols", tables.tongue_cols)], axis=2)
        jaw_src, eyes_src = kept, kept
        jaw_rng, eyes_rng = (int(ends[1]), int(ends[2])), (int(ends[2]), int(ends[3]))
        keep_outputs = ["output_latents"]
        noise_out: tuple[int, ...] = noise_shape
    else:
        rspec = folder.regression
        assert rspec is not None
        if "result" not in outs:
            raise EngineBuildError(f"{folder.onnx_path}: no output 'result'")
        f0, frames = 0, 1
        sizes = (rspec.num_shapes_skin, rspec.num_shapes_tongue, rspec.result_jaw_size,
                 rspec.result_eyes_size)
        ends = np.cumsum(sizes)
        res = "result"  # [B, 1, R]
        ident = g.const("identity_index", np.zeros(1, np.int64))  # one identity; broadcast
        coeffs = g.slice(res, 2, 0, int(ends[0]))
        assert tables.skin_basis is not None
        x = g.op("MatMul", [coeffs, g.const("skin_basis", tables.skin_basis)])  # [B, 1, U]
        tx = g.slice(res, 2, int(ends[0]), int(ends[1]))
        jaw_src, eyes_src = res, res
        jaw_rng, eyes_rng = (int(ends[1]), int(ends[2])), (int(ends[2]), int(ends[3]))
        keep_outputs = []
        noise_out = ()
    a_item = g.op("Gather", [g.const("skin_a", tables.skin_a), ident], axis=0)
    yn_item = g.op("Gather", [g.const("skin_yn", tables.skin_yn), ident], axis=0)
    _mask_and_project(g, x, a_item, yn_item, frames, "face_mask_level", "face_mask_softness")
    t_item = g.op("Gather", [g.const("tongue_k", tables.tongue_k), ident], axis=0)
    g.op("MatMul", [tx, t_item], "tongue")
    g.slice(jaw_src, 2, *jaw_rng, out="jaw")
    g.slice(eyes_src, 2, *eyes_rng, out="eyes")
    ps, pt = tables.skin_a.shape[2], tables.tongue_k.shape[2]
    outputs = [_value_info("skin_upper", ["batch", frames, ps]),
               _value_info("skin_lower", ["batch", frames, ps]),
               _value_info("tongue", ["batch", frames, pt]),
               _value_info("jaw", ["batch", frames, sizes[2]]),
               _value_info("eyes", ["batch", frames, sizes[3]])]
    kept_out = [o for o in graph.output if o.name in keep_outputs]
    del graph.output[:]
    graph.output.extend(outputs + kept_out)
    graph.input.extend(new_inputs)
    graph.initializer.extend(g.inits)
    nodes = _toposort([*graph.node, *g.nodes],
                      {i.name for i in graph.input} | {i.name for i in graph.initializer})
    del graph.node[:]
    graph.node.extend(nodes)
    model.opset_import[0].version = max(model.opset_import[0].version, SERVING_GRAPH_OPSET)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:  # pragma: no cover - a composition bug
        raise EngineBuildError(f"serving graph of {folder.onnx_path} is invalid: {err}") from err
    out_path = Path(out_path)
    onnx.save(model, os.fspath(out_path))
    info = ServingGraphInfo(
        kind=folder.kind, frame_start=f0, frames=frames, skin_poses=tables.skin_poses,
        tongue_poses=tables.tongue_poses, skin_width=int(ps), tongue_width=int(pt),
        noise=noise if folder.diffusion is not None else None,
        fresh_source=(fresh_source if folder.diffusion is not None and noise == "fresh"
                      else None),
        noise_seed=int(noise_seed), pool_rows=int(pool_rows) if "noise_pool" in resident else 0,
        noise_shape=tuple(int(v) for v in noise_out),
        inputs=tuple(info_inputs + [i.name for i in new_inputs]),
        resident_inputs=tuple(resident),
        outputs=tuple(o.name for o in graph.output))
    info.save(info_path(out_path))
    logger.info("composed serving graph %s (%s, noise %s): %d skin values x %d poses, "
                "outputs %s, in %.1f s", out_path, folder.kind, info.noise,
                tables.skin_cols.size, ps, ", ".join(info.outputs), time.perf_counter() - t0)
    return info


def resident_inputs(info: ServingGraphInfo) -> dict[str, np.ndarray]:
    """The values of the graph's resident inputs (set once per engine, then left out of every
    run): the constant noise ``[1, S+1, Fw, D]`` or the fresh noise pool ``[R, D]``."""
    if "constant_noise" in info.resident_inputs:
        return {"constant_noise": constant_noise((1, *info.noise_shape), info.noise_seed)}
    if "noise_pool" in info.resident_inputs:
        return {"noise_pool": noise_pool(info.pool_rows, info.noise_shape[2], info.noise_seed)}
    return {}


def info_path(graph_path: str | os.PathLike[str]) -> Path:
    """Where the :class:`ServingGraphInfo` of a serving graph file is kept."""
    p = Path(graph_path)
    return p.with_name(p.name + ".json")
