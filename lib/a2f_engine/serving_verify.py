"""Verify a serving graph (or an engine built from it) against the unmodified network.

The reference is independent of the graph's construction: ONNX Runtime runs the model's own
``network.onnx`` (optimisations off) on the same inputs and noise, and
:func:`reference_products` computes the post-processing products in float64 NumPy straight
from the model folder, item by item (skin delta -> face mask split -> active poses, tongue
delta -> active poses, jaw and eyes as they are; the definitions of
``a2f_inference.pipeline.postprocess``).

Tolerance, per output tensor: ``max |got - want| <= atol + rtol * max |want|``. The
projections are sums over tens of thousands of values, so the error scales with the
tensor's magnitude, not with each element's (an element near 0 is a cancellation of large
terms). ``fp32``: atol 1e-5, rtol 1e-4 (measured on the stand-ins with ONNX Runtime: about
1e-6 of the peak); ``fp16``: 2e-2 / 2e-2.

Noise: ``constant`` and ``fresh``/``pool`` graphs are deterministic given their inputs, so
the reference receives the very noise the graph builds. A ``fresh``/``rng`` graph draws in the
engine; its outputs cannot be compared and only shapes and finiteness are checked (its
deterministic twin, the same model composed with ``constant``, is what proves the rest).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from a2f_engine.base import Engine
from a2f_engine.errors import VerificationError
from a2f_engine.noise import draw_pool_mix, pool_noise
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_engine.serving_graph import (
    ServingGraphInfo,
    active_matrix,
    face_mask_values,
    normalised_y,
    resident_inputs,
)
from a2f_volume.model_folder import ModelFolder

logger = logging.getLogger(__name__)

#: (atol, rtol of the tensor's peak) per precision.
SERVING_TOLERANCES: Mapping[str, tuple[float, float]] = {"fp32": (1e-5, 1e-4),
                                                         "fp16": (2e-2, 2e-2)}


@dataclass(frozen=True)
class ServingVerification:
    worst_ratio: float  # max over outputs of error / (atol + rtol * peak); pass iff <= 1
    errors: Mapping[str, float]  # max abs error per output
    atol: float
    rtol: float
    batches: tuple[int, ...]
    compared: bool  # False for in-graph random noise (shapes and finiteness only)

    def to_json(self) -> dict[str, object]:
        return {"worst_ratio": self.worst_ratio, "errors": dict(self.errors),
                "atol": self.atol, "rtol": self.rtol, "batches": list(self.batches),
                "compared": self.compared,
                "reference": "onnxruntime on network.onnx, optimisations disabled, "
                             "then NumPy post-processing products (float64)"}


def reference_products(folder: ModelFolder, info: ServingGraphInfo,
                       raw: Mapping[str, np.ndarray], identity_index: Sequence[int],
                       level: Sequence[float], softness: Sequence[float]
                       ) -> dict[str, np.ndarray]:
    """The serving graph's outputs computed from the unmodified network's outputs ``raw``."""
    if folder.diffusion is not None:
        d = folder.diffusion
        rows = np.asarray(raw["prediction"], dtype=np.float64)[
            :, info.frame_start: info.frame_start + info.frames]
        sizes = (d.skin_size, d.tongue_size, d.jaw_size, d.eyes_size)
    else:
        r = folder.regression
        assert r is not None
        rows = np.asarray(raw["result"], dtype=np.float64)
        sizes = (r.num_shapes_skin, r.num_shapes_tongue, r.result_jaw_size, r.result_eyes_size)
    ends = np.cumsum(sizes)
    b, f = rows.shape[0], rows.shape[1]
    out = {"skin_upper": np.zeros((b, f, info.skin_width)),
           "skin_lower": np.zeros((b, f, info.skin_width)),
           "tongue": np.zeros((b, f, info.tongue_width)),
           "jaw": rows[:, :, ends[1]: ends[2]], "eyes": rows[:, :, ends[2]: ends[3]]}
    for k in range(b):
        ident = folder.identities[int(identity_index[k])]
        skin = rows[k, :, : ends[0]]
        tongue = rows[k, :, ends[0]: ends[1]]
        if ident.skin_pca is not None:
            skin = skin @ ident.skin_pca.astype(np.float64)
        if ident.tongue_pca is not None:
            tongue = tongue @ ident.tongue_pca.astype(np.float64)
        srows, a = active_matrix(ident.skin)
        m = face_mask_values(normalised_y(ident.skin_neutral), float(level[k]),
                             float(softness[k]))[srows]
        out["skin_upper"][k, :, : a.shape[1]] = (skin[:, srows] * (1.0 - m)) @ a
        out["skin_lower"][k, :, : a.shape[1]] = (skin[:, srows] * m) @ a
        trows, at = active_matrix(ident.tongue)
        out["tongue"][k, :, : at.shape[1]] = tongue[:, trows] @ at
    if "output_latents" in raw:
        out["output_latents"] = np.asarray(raw["output_latents"], dtype=np.float64)
    return out


@dataclass(frozen=True)
class VerificationCase:
    """One batch of inputs: for the serving graph, and what the unmodified network gets."""

    graph_feeds: dict[str, np.ndarray]  # without the resident inputs
    network_feeds: dict[str, np.ndarray] | None  # None: noise not reproducible (rng)
    identity_index: list[int]
    level: list[float]
    softness: list[float]


def make_case(folder: ModelFolder, info: ServingGraphInfo, batch: int, seed: int = 0,
              resident: Mapping[str, np.ndarray] | None = None,
              identity_index: Sequence[int] | None = None,
              level: Sequence[float] | None = None,
              softness: Sequence[float] | None = None) -> VerificationCase:
    """Seeded inputs for ``batch`` items: audio-like windows, each item its own identity
    (cycling through all), face mask level and softness (item 0 the identity's defaults,
    the others spread over the allowed ranges) unless given."""
    rng = np.random.default_rng(seed)
    n_id = len(folder.identities)
    idx = list(identity_index) if identity_index is not None else [
        (seed + k) % n_id for k in range(batch)]
    if level is None or softness is None:
        cfg = folder.identities[idx[0]].config
        level = [float(cfg.get("face_mask_level", 0.6)), *rng.uniform(0.2, 0.9, batch - 1)]
        softness = [float(cfg.get("face_mask_softness", 0.0085)),
                    *rng.uniform(0.002, 0.2, batch - 1)]
    common = {"face_mask_level": np.asarray(level, np.float32),
              "face_mask_softness": np.asarray(softness, np.float32)}
    net: dict[str, np.ndarray] = {}
    if folder.diffusion is not None:
        d = folder.diffusion
        onehot = np.zeros((batch, n_id), np.float32)
        onehot[np.arange(batch), idx] = 1.0
        net = {"window": (0.3 * rng.standard_normal((batch, folder.audio.buffer_len))
                          ).astype(np.float32),
               "identity": onehot,
               "emotion": rng.uniform(0, 1, (batch, d.center, len(folder.emotions))
                                      ).astype(np.float32),
               "input_latents": (0.1 * rng.standard_normal(
                   (d.num_diffusion_steps, d.num_gru_layers, batch, d.gru_latent_dim))
                                 ).astype(np.float32)}
    else:
        r = folder.regression
        assert r is not None
        net = {"input": (0.3 * rng.standard_normal((batch, 1, folder.audio.buffer_len))
                         ).astype(np.float32),
               "emotion": rng.uniform(0, 1, (batch, 1, r.emotion_size)).astype(np.float32)}
    graph = {**net, **common}
    network: dict[str, np.ndarray] | None = dict(net)
    values = dict(resident) if resident is not None else resident_inputs(info)
    if info.noise == "constant":
        assert network is not None
        network["noise"] = np.broadcast_to(values["constant_noise"],
                                           (batch, *info.noise_shape)).copy()
    elif info.noise == "fresh" and info.fresh_source == "pool":
        rows, mix = draw_pool_mix(rng, batch, info.noise_shape[0], info.noise_shape[1],
                                  info.pool_rows)
        graph["noise_rows"], graph["noise_mix"] = rows, mix
        assert network is not None
        network["noise"] = pool_noise(values["noise_pool"], rows, mix)
    elif info.noise == "fresh":
        network = None
    return VerificationCase(graph, network, idx, [float(v) for v in level],
                            [float(v) for v in softness])


def run_graph(engine: Engine, feeds: Mapping[str, np.ndarray],
              resident: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``engine.run`` with the resident inputs: set once through the engine's
    ``set_resident_input`` when it has one, else added to the feeds."""
    setter = getattr(engine, "set_resident_input", None)
    if setter is None:
        return engine.run({**feeds, **resident})
    return engine.run(dict(feeds))


def set_resident(engine: Engine, resident: Mapping[str, np.ndarray]) -> None:
    setter = getattr(engine, "set_resident_input", None)
    if setter is not None:
        for name, value in resident.items():
            setter(name, value)


def compare_products(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
                     atol: float, rtol: float) -> tuple[float, dict[str, float], str]:
    """(worst ratio, max abs error per output, where the worst is)."""
    worst, where = 0.0, ""
    errors: dict[str, float] = {}
    for name, ref in want.items():
        if name not in got:
            return float("inf"), errors, f"output {name!r} missing"
        out = np.asarray(got[name], dtype=np.float64)
        if out.shape != ref.shape:
            return float("inf"), errors, f"output {name!r} shape {out.shape} != {ref.shape}"
        if not np.all(np.isfinite(out)):
            return float("inf"), errors, f"output {name!r} has non-finite values"
        err = float(np.abs(out - ref).max()) if ref.size else 0.0
        errors[name] = err
        ratio = err / (atol + rtol * (float(np.abs(ref).max()) if ref.size else 0.0))
        if ratio >= worst:
            worst, where = ratio, f"output {name!r} (max abs error {err:.3g})"
    return worst, errors, where


def verify_serving_graph(engine: Engine, folder: ModelFolder, info: ServingGraphInfo, *,
                         precision: str = "fp32", batches: Sequence[int] = (1, 3),
                         seed: int = 0) -> ServingVerification:
    """Compare ``engine`` (running the serving graph of ``folder``) with the unmodified
    ``network.onnx`` plus :func:`reference_products` on seeded batches.

    Sets the graph's resident inputs on the engine (``set_resident_input``) when it has
    that method. Raises :class:`VerificationError` naming the worst output when the error
    is beyond the precision's tolerance.
    """
    atol, rtol = SERVING_TOLERANCES[precision]
    used = tuple(sorted({max(1, min(b, engine.max_batch)) for b in batches}))
    resident = resident_inputs(info)
    set_resident(engine, resident)
    reference = OnnxRuntimeEngine(folder.onnx_path, max_batch=max(used), optimize=False)
    worst, where, compared = 0.0, "", True
    errors: dict[str, float] = {}
    try:
        for b in used:
            case = make_case(folder, info, b, seed + b, resident)
            got = run_graph(engine, case.graph_feeds, resident)
            if case.network_feeds is None:
                compared = False
                bad = [n for n in info.outputs if n not in got or not np.all(np.isfinite(got[n]))]
                if bad:
                    raise VerificationError(f"serving graph outputs missing or non-finite: {bad}")
                continue
            want = reference_products(folder, info, reference.run(case.network_feeds),
                                      case.identity_index, case.level, case.softness)
            w, errs, loc = compare_products(got, want, atol, rtol)
            for k, v in errs.items():
                errors[k] = max(errors.get(k, 0.0), v)
            if w >= worst:
                worst, where = w, f"batch {b}, {loc}"
    finally:
        reference.close()
    if not compared:
        logger.warning("serving graph draws its noise in the engine: outputs checked for "
                       "shape and finiteness only")
    result = ServingVerification(worst, errors, atol, rtol, used, compared)
    if not worst <= 1.0:
        raise VerificationError(
            f"serving graph differs from network.onnx + post-processing beyond {precision} "
            f"tolerance (atol {atol}, rtol {rtol} of each output's peak): worst at {where}")
    return result
