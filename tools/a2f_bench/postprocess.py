"""Frames per second of post-processing alone (``FramePostprocessor.process``)."""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from a2f_inference.pipeline.params import FaceParams
from a2f_inference.pipeline.postprocess import FramePostprocessor
from a2f_volume.errors import InvalidArgumentError
from a2f_volume.model_folder import ModelFolder


def benchmark_postprocess(
    model: ModelFolder,
    frames: int = 300,
    batch: int = 30,
    seed: int = 0,
    rows: np.ndarray | None = None,
    blas_threads: int | None = 1,
) -> float:
    """Frames per second of :meth:`FramePostprocessor.process` for ``model`` (first
    identity, its default parameters), fed in batches of ``batch`` consecutive frames.

    ``rows`` (``[N, R]``, e.g. recorded network outputs) are cycled through; without them,
    a smooth random walk of network-sized rows is used (consecutive frames of speech change
    slowly, which the solver's warm start relies on). The projections are built before
    timing (they are cached per configuration). BLAS runs with ``blas_threads`` threads
    during the measurement, as in the server (``limit_blas_threads``); ``None`` leaves the
    library's setting.
    """
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return _measure(model, frames, batch, seed, rows)


def _measure(
    model: ModelFolder, frames: int, batch: int, seed: int, rows: np.ndarray | None
) -> float:
    ident = model.identities[0]
    pp = FramePostprocessor(model, ident, FaceParams.from_config(ident.config), fps=30.0)
    if rows is None:
        rng = np.random.default_rng(seed)
        n = max(min(frames, 120), batch)
        steps = rng.standard_normal((n, pp.layout.size), dtype=np.float32) * 0.3
        walk = np.cumsum(steps, axis=0) / np.sqrt(np.arange(1, n + 1, dtype=np.float32))[:, None]
        rows = walk * (0.01 if model.diffusion is not None else 1.0)
    rows = _as_rows(rows, pp.layout.size)
    times = np.arange(rows.shape[0]) / pp.fps
    pp.process(rows[:batch], times[:batch])  # warm up
    pp.reset()
    done = 0
    t0 = time.perf_counter()
    while done < frames:
        i = done % rows.shape[0]
        chunk = rows[i : i + batch]
        pp.process(chunk, times[i : i + batch])
        done += chunk.shape[0]
    return done / (time.perf_counter() - t0)


def _as_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` as ``[frames, size]`` (one row may be given flat)."""
    r = np.asarray(rows)
    if r.ndim == 1:
        r = r[None, :]
    if r.ndim != 2 or r.shape[1] != size:
        raise InvalidArgumentError(
            f"network rows of shape {list(np.shape(rows))}; expected [frames, {size}]")
    return r
