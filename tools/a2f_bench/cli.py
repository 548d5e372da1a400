"""The ``a2f-bench`` command: ``pipeline`` (library vs network) and ``serve`` (server under load).

See :mod:`a2f_bench.pipeline` and :mod:`a2f_bench.serve` for what each measures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from a2f_bench import pipeline, serve, serving_graph
from a2f_bench.a2e import cmd_serve_a2e
from a2f_bench.transports import compare_transports
from a2f_engine.blas import configure_blas_threads

Subcommand = Callable[[argparse.Namespace], int]


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``a2f-bench pipeline``."""
    p.add_argument("--model", default=os.environ.get("A2F_BENCH_MODEL"),
                   help="model folder (env A2F_BENCH_MODEL); default: a generated stand-in")
    p.add_argument("--kind", choices=("regression", "diffusion"), default="regression",
                   help="stand-in kind when --model is not given (default regression)")
    p.add_argument("--size", choices=("full", "small"), default="full",
                   help="stand-in size when --model is not given (default full)")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams (default 8)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="seconds of audio per stream (default 10)")
    p.add_argument("--workers", type=int, default=0,
                   help="inference workers running batches side by side (default 0: the "
                        "server's automatic plan, one per core up to 4)")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads per worker (default 0: the cores "
                        "shared out among the workers)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="windows per batch (default: the model's trt_info MAX_BATCH_SIZE)")
    p.add_argument("--max-wait-s", type=float, default=0.002,
                   help="batch fill wait in seconds (default 0.002)")
    p.add_argument("--chunk-s", type=float, default=0.1,
                   help="audio pushed per stream per round, seconds (default 0.1)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads for post-processing, as in the server (default 1; "
                        "0 leaves the library default)")
    p.add_argument("--repeat", type=int, default=5,
                   help="rounds of (pipeline, then network on the same batch sizes); the "
                        "ratio is the median over rounds, the figures the best (default 5)")
    p.add_argument("--noise", choices=("constant", "fresh"), default="constant",
                   help="diffusion noise policy of the serving graph (default constant)")
    p.add_argument("--noise-seed", type=int, default=0,
                   help="seed of the constant noise / the fresh noise pool (default 0)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def cmd_serve(args: argparse.Namespace) -> int:
    """``a2f-bench serve`` (or, with ``--compare-transports``, the gRPC layer alone)."""
    if args.compare_transports:
        figures = compare_transports(args.streams, args.clip_s, args.duration_s)
        print(json.dumps(figures) if args.json else "\n".join(
            f"{k:10s} {v['frames_per_s']:8.0f} frames/s, server CPU "
            f"{v['server_cpu_s_per_1000_frames']:.2f} s per 1000 frames, errors {v['errors']}"
            for k, v in figures.items()), flush=True)
        return 0
    if args.a2e:
        return cmd_serve_a2e(args)
    res = serve.run_serve_bench(args)
    print(serve.report(res, args.json), flush=True)
    return 0 if res.errors == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2f-bench", description="Audio2Face-3D benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "pipeline", help="pipeline vs network throughput (frames/s per core)",
        description="Feed N streams of synthetic speech through the pipeline and compare its "
                    "throughput with the network alone on the same batch sizes.")
    add_pipeline_arguments(p)
    p.set_defaults(func=pipeline.cmd_pipeline)
    s = sub.add_parser(
        "serve", help="the gRPC server under N concurrent streams vs the library alone",
        description="Start a2f-inference on 127.0.0.1, drive N concurrent streams (real time "
                    "or as fast as possible) for a bounded time, then measure the pipeline "
                    "library alone on the same model in the same run.")
    serve.add_arguments(s)
    s.set_defaults(func=cmd_serve)
    g = sub.add_parser(
        "serving-graph", help="per-window cost of the serving graph vs network + host work",
        description="Time one window of the composed serving graph against the original "
                    "network plus the host noise and NumPy products it replaces.")
    serving_graph.add_arguments(g)
    g.set_defaults(func=serving_graph.cmd_serving_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_blas_threads()  # A2F_BLAS_THREADS (default 1), as every service
    if (getattr(args, "streams", 1) < 1 or getattr(args, "seconds", 1.0) <= 0
            or getattr(args, "repeat", 1) < 1):
        parser.error("--streams and --repeat must be >= 1 and --seconds > 0")
    func: Subcommand = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
