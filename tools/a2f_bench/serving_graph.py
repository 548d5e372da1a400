"""``a2f-bench serving-graph``: per-window cost of the composed serving graph against the
network + host work it replaces.

    a2f-bench serving-graph --size full --batch 4

For each noise policy, one window of ``--batch`` streams is timed ``--windows`` times:

* ``original``: what the pipeline does today per window: the noise on the host (``constant``:
  the stored tensor stacked per item; ``fresh``: a NumPy N(0, 1) draw per item), the
  unmodified ``network.onnx``, then the post-processing products in NumPy (frames 15..44,
  skin rows x the cached ``[Ku; Kl]ᵀ`` projection, tongue rows x its projection);
* ``network alone``: the unmodified network on a stored noise tensor (the baseline);
* ``composed``: the serving graph (resident inputs fed as stored arrays; ``fresh``: the
  pool's per-window rows and angles drawn on the host).

Prints wall ms and process CPU ms per window for both; ONNX Runtime with one intra-op
thread and BLAS limited to one thread, as a server worker runs. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from a2f_bench.standins import standin_folder
from a2f_engine.blas import configure_blas_threads
from a2f_engine.noise import NoisePolicy, draw_pool_mix, parse_noise_policies
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_engine.serving_graph import compose_serving_graph, resident_inputs
from a2f_engine.serving_verify import make_case
from a2f_inference.pipeline.postprocess import (
    RowLayout,
    skin_projection,
    tongue_projection,
)
from a2f_volume.model_folder import ModelFolder, load_model_folder


def _timed(fn: Callable[[], object], windows: int) -> tuple[float, float]:
    fn()  # warm up
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(windows):
        fn()
    return ((time.perf_counter() - w0) * 1e3 / windows, (time.process_time() - c0) * 1e3 / windows)


def bench_policy(folder: ModelFolder, policy: NoisePolicy, batch: int, windows: int,
                 tmp: Path) -> None:
    """Time one noise policy and print its figures."""
    d = folder.diffusion
    assert d is not None
    layout = RowLayout.of(folder)
    network = OnnxRuntimeEngine(folder.onnx_path, intra_op_threads=1)
    t0 = time.perf_counter()
    path = tmp / f"serving-{policy}.onnx"
    info = compose_serving_graph(folder, path, noise=policy)
    compose_s = time.perf_counter() - t0
    composed = OnnxRuntimeEngine(path, intra_op_threads=1)
    resident = resident_inputs(info)
    case = make_case(folder, info, batch, seed=1, resident=resident)
    assert case.network_feeds is not None
    net_feeds = {k: v for k, v in case.network_feeds.items() if k != "noise"}
    fixed_noise = case.network_feeds["noise"]
    projections = [(skin_projection(folder.identities[i], lv, sf),
                    tongue_projection(folder.identities[i]))
                   for i, lv, sf in zip(case.identity_index, case.level, case.softness,
                                        strict=True)]
    rng = np.random.Generator(np.random.SFC64(0))
    pool_rng = np.random.default_rng(0)
    shape = (1, *info.noise_shape)

    def network_alone() -> None:
        network.run({**net_feeds, "noise": fixed_noise})

    def original() -> None:
        if policy == "constant":
            noise = np.concatenate([resident["constant_noise"]] * batch)
        else:
            noise = np.concatenate([rng.standard_normal(shape, dtype=np.float32)
                                    for _ in range(batch)])
        out = network.run({**net_feeds, "noise": noise})
        kept = out["prediction"][:, d.left_truncate: d.left_truncate + d.center]
        for k, (sp, tp) in enumerate(projections):
            skin = kept[k, :, layout.skin]
            tongue = kept[k, :, layout.tongue]
            _ = (skin if sp.cols is None else skin[:, sp.cols]) @ sp.kt
            _ = (tongue if tp.cols is None else tongue[:, tp.cols]) @ tp.kt

    def host_draw() -> dict[str, np.ndarray]:
        if policy != "fresh":
            return {}
        rows, mix = draw_pool_mix(pool_rng, batch, info.noise_shape[0], info.noise_shape[1],
                                  info.pool_rows)
        return {"noise_rows": rows, "noise_mix": mix}

    def serving() -> None:
        composed.run({**case.graph_feeds, **host_draw(), **resident})

    nw, nc = _timed(network_alone, windows)
    ow, oc = _timed(original, windows)
    sw, sc = _timed(serving, windows)
    _, host_c = _timed(host_draw, windows)
    frames = batch * d.center
    print(f"{policy:8s} batch {batch} ({frames} output frames/window), compose {compose_s:.1f} s")
    for label, w, c in (("network alone (noise supplied, nothing else)", nw, nc),
                        ("original network + host noise + NumPy products", ow, oc),
                        ("composed serving graph", sw, sc)):
        print(f"  {label:48s} {w:8.1f} ms wall {c:8.1f} ms CPU per window "
              f"({c / frames:.2f} ms CPU/frame)")
    print(f"  host work per window outside the engine (pool draw): {host_c:.3f} ms CPU")
    composed.close()
    network.close()


def bench_regression(folder: ModelFolder, batch: int, windows: int, tmp: Path) -> None:
    """The regression network alone against its serving graph (one frame per window)."""
    info = compose_serving_graph(folder, tmp / "serving-regression.onnx")
    network = OnnxRuntimeEngine(folder.onnx_path, intra_op_threads=1)
    composed = OnnxRuntimeEngine(tmp / "serving-regression.onnx", intra_op_threads=1)
    case = make_case(folder, info, batch, seed=1)
    assert case.network_feeds is not None
    net_feeds = case.network_feeds
    nw, nc = _timed(lambda: network.run(net_feeds), windows)
    sw, sc = _timed(lambda: composed.run(case.graph_feeds), windows)
    print(f"regression batch {batch} ({batch} frames)")
    print(f"  network alone:          {nw:8.1f} ms wall {nc:8.1f} ms CPU per batch")
    print(f"  composed serving graph: {sw:8.1f} ms wall {sc:8.1f} ms CPU per batch")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags of ``a2f-bench serving-graph``."""
    ap.add_argument("--size", default="full", choices=("small", "full"))
    ap.add_argument("--batch", type=int, default=4, help="windows per run (default 4)")
    ap.add_argument("--windows", type=int, default=5, help="timed runs (default 5)")
    ap.add_argument("--policies", default="constant,fresh",
                    help="diffusion noise policies to time (default constant,fresh)")
    ap.add_argument("--kind", default="diffusion", choices=("diffusion", "regression"))


def cmd_serving_graph(args: argparse.Namespace) -> int:
    configure_blas_threads(1)
    with tempfile.TemporaryDirectory(prefix="a2f-serving-bench-") as tmp:
        if args.kind == "regression":
            bench_regression(load_model_folder(standin_folder("regression", args.size)),
                             args.batch, args.windows, Path(tmp))
            return 0
        folder = load_model_folder(standin_folder("diffusion", args.size))
        for policy in args.policies.split(","):
            bench_policy(folder, _policy(policy), args.batch, args.windows, Path(tmp))
    return 0


def _policy(name: str) -> NoisePolicy:
    default, _ = parse_noise_policies(name)
    return default

