"""Which engines are serving graphs, and how a process gets one without a built engine.

One rule for the engine-builder, the inference server and the benchmarks
(:func:`uses_serving_graph`):

* **diffusion**: always, on both backends. The host no longer draws the noise nor slices and
  projects 60 frames of 88831 values per window; on the CPU the projection costs the same in
  the engine as in NumPy (see ``docs/serving-graph.md``), so nothing is lost there either.
* **regression**: on TensorRT only. Its graph must decode the 272 PCA coefficients into the
  used pose values before the face mask split, which costs about 2.5x the network on a CPU,
  while the host projection is only ``2 Pa x 272`` multiply-adds per frame; on a GPU the
  decode is one small GEMM.
* anything else (Audio2Emotion): never.

A serving-graph engine is described by its :class:`~a2f_engine.serving_graph.ServingGraphInfo`,
kept in the engine record (``serving_graph``) by the engine-builder; :func:`serving_key`
names what a composition depends on besides the ONNX bytes (kind, noise policy and source,
the composition format), so engines of different compositions never share a cache entry.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from a2f_engine.noise import DEFAULT_NOISE_SEED, DEFAULT_POOL_ROWS, NoisePolicy
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_engine.serving_graph import ServingGraphInfo, compose_serving_graph
from a2f_volume.layout import BACKEND_TENSORRT
from a2f_volume.model_folder import ModelFolder

logger = logging.getLogger(__name__)

#: Version of the composition (bumped when the graph a given model and policy yield changes).
SERVING_GRAPH_FORMAT = 1


def uses_serving_graph(kind: str, backend: str) -> bool:
    """Whether a ``kind`` model is served through its serving graph on ``backend``."""
    if kind == "diffusion":
        return True
    if kind == "regression":
        return backend == BACKEND_TENSORRT
    return False


def serving_key(info: ServingGraphInfo) -> str:
    """What the composition depends on besides the ONNX bytes (for cache keys and checks)."""
    return (f"serving-graph-v{SERVING_GRAPH_FORMAT}:{info.kind}:{info.noise or '-'}:"
            f"{info.fresh_source or '-'}:{info.pool_rows}")


def wanted_key(kind: str, noise: NoisePolicy) -> str:
    """:func:`serving_key` of the graph that :func:`compose_for` would compose."""
    if kind == "diffusion":
        source, rows = ("pool", DEFAULT_POOL_ROWS) if noise == "fresh" else (None, 0)
        return (f"serving-graph-v{SERVING_GRAPH_FORMAT}:{kind}:{noise}:{source or '-'}:"
                f"{rows}")
    return f"serving-graph-v{SERVING_GRAPH_FORMAT}:{kind}:-:-:0"


def info_from_record(doc: Mapping[str, Any] | None) -> ServingGraphInfo | None:
    """The serving graph described in an engine record's ``serving_graph`` (None: a plain
    engine of the unmodified network). Raises ValueError when the description is malformed."""
    if not doc:
        return None
    try:
        return ServingGraphInfo.from_json(dict(doc))
    except TypeError as err:
        raise ValueError(f"engine record: malformed serving_graph: {err}") from err


def compose_for(folder: ModelFolder, out: str | os.PathLike[str], noise: NoisePolicy,
                seed: int = DEFAULT_NOISE_SEED) -> ServingGraphInfo:
    """Compose ``folder``'s serving graph into ``out`` (the noise policy only matters for
    diffusion; the fresh policy uses the pool source, whose output can be verified)."""
    return compose_serving_graph(folder, out, noise=noise, fresh_source="pool",
                                 noise_seed=seed)


def composed_onnxruntime(folder: ModelFolder, noise: NoisePolicy, *, max_batch: int,
                         intra_op_threads: int = 0, seed: int = DEFAULT_NOISE_SEED
                         ) -> tuple[OnnxRuntimeEngine, ServingGraphInfo]:
    """An ONNX Runtime engine of ``folder``'s serving graph, composed in a temporary
    directory (about a second for the full-size diffusion model; the file is removed once
    the session holds the graph). For a process that serves a model without a built
    engine (the server's ``onnx-fallback``, the benchmarks)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="a2f-serving-") as tmp:
        path = Path(tmp) / "serving.onnx"
        info = compose_for(folder, path, noise, seed)
        engine = OnnxRuntimeEngine(path, max_batch=max_batch, intra_op_threads=intra_op_threads)
    logger.info("model %s: serving graph composed and loaded with ONNX Runtime in %.1f s "
                "(noise %s)", folder.name, time.perf_counter() - t0, info.noise or "-")
    return engine, info
