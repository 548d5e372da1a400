"""Verify an engine before publishing it: same inputs, compare with ONNX Runtime on the ONNX."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from a2f_engine.base import Engine, TensorSpec
from a2f_engine.errors import VerificationError
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine

logger = logging.getLogger(__name__)

# (absolute, relative) tolerance per precision. FP32 differences come only from reordered
# float arithmetic (fusions, other kernels); FP16 keeps ~3 significant digits.
TOLERANCES: Mapping[str, tuple[float, float]] = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2)}


@dataclass(frozen=True)
class VerificationResult:
    max_abs_error: float
    worst_ratio: float  # max over elements of |a-b| / (atol + rtol*|b|); pass iff <= 1
    atol: float
    rtol: float
    batches: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"max_abs_error": self.max_abs_error, "worst_ratio": self.worst_ratio,
                "atol": self.atol, "rtol": self.rtol, "batches": list(self.batches),
                "reference": "onnxruntime on network.onnx, optimisations disabled"}


def deterministic_feeds(inputs: Sequence[TensorSpec], batch: int, seed: int = 0,
                        opt_shapes: Mapping[str, tuple[int, ...]] | None = None,
                        ) -> dict[str, np.ndarray]:
    """Seeded inputs in [-0.5, 0.5]: the batch axis set to ``batch``, any other dynamic axis
    taken from ``opt_shapes`` (the TensorRT opt profile) or 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = list(spec.shape)
        for i, d in enumerate(shape):
            if d < 0:
                if i == spec.batch_axis:
                    shape[i] = batch
                elif opt_shapes and spec.name in opt_shapes:
                    shape[i] = opt_shapes[spec.name][i]
                else:
                    shape[i] = 1
        dtype = spec.dtype if spec.dtype.kind == "f" else np.dtype(np.float32)
        feeds[spec.name] = (rng.random(shape, dtype=np.float32) - 0.5).astype(dtype)
    return feeds


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
            atol: float, rtol: float) -> tuple[float, float, str]:
    """(max abs error, worst tolerance ratio, description of the worst element)."""
    max_abs, worst, where = 0.0, 0.0, ""
    for name, ref in want.items():
        if name not in got:
            return float("inf"), float("inf"), f"output {name!r} missing"
        out = np.asarray(got[name])
        if out.shape != ref.shape:
            return float("inf"), float("inf"), f"output {name!r} shape {out.shape} != {ref.shape}"
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        if not np.all(np.isfinite(out)):
            return float("inf"), float("inf"), f"output {name!r} has non-finite values"
        if diff.size == 0:
            continue
        ratio = diff / (atol + rtol * np.abs(ref.astype(np.float64)))
        idx = int(np.argmax(ratio))
        if ratio.flat[idx] > worst:
            worst = float(ratio.flat[idx])
            where = f"output {name!r} element {np.unravel_index(idx, ref.shape)}"
        max_abs = max(max_abs, float(diff.max()))
    return max_abs, worst, where


def verify_engine(engine: Engine, onnx_path: str | os.PathLike[str], precision: str = "fp32",
                  batches: Sequence[int] = (1, 2), seed: int = 0,
                  opt_shapes: Mapping[str, tuple[int, ...]] | None = None,
                  ) -> VerificationResult:
    """Run ``engine`` and ONNX Runtime on ``onnx_path`` on the same seeded inputs.

    Raises :class:`VerificationError` when any output differs beyond the precision's
    tolerance; returns the measured error otherwise.
    """
    atol, rtol = TOLERANCES[precision]
    used = tuple(sorted({max(1, min(b, engine.max_batch)) for b in batches}))
    reference = OnnxRuntimeEngine(onnx_path, max_batch=max(used), optimize=False)
    try:
        max_abs, worst, where = 0.0, 0.0, ""
        for b in used:
            feeds = deterministic_feeds(reference.inputs, b, seed + b, opt_shapes)
            want = reference.run(feeds)
            got = engine.run(feeds)
            m, w, loc = compare(got, want, atol, rtol)
            max_abs = max(max_abs, m)
            if w >= worst:
                worst, where = w, f"batch {b}, {loc}"
    finally:
        reference.close()
    result = VerificationResult(max_abs, worst, atol, rtol, used)
    if not worst <= 1.0:
        raise VerificationError(
            f"engine output differs from ONNX Runtime beyond {precision} tolerance "
            f"(atol {atol}, rtol {rtol}): max abs error {max_abs:.3g}, worst at {where}")
    return result
