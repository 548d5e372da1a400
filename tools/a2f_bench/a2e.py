"""``a2f-bench serve --a2e SIZE``: what Audio2Emotion adds to every served frame.

Runs the same load twice against ``a2f-inference`` (a subprocess on 127.0.0.1): without an
A2E model, then with the A2E stand-in of ``SIZE`` beside the face model, and reports server
CPU per frame, frames/s and frame latency of both, and the difference: the cost A2E adds per
frame (its windows, batched inference every ``inference_interval`` frames, the per-frame
post-processing and the emotion aggregate). Latency counts from the arrival of the audio a
frame needs, which with A2E includes its centred window (half a window of look-ahead).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from a2f_bench import serve
from a2f_bench.load import ServeBenchResult


def cpu_ms_per_frame(res: ServeBenchResult) -> float:
    return 1000.0 * res.server_cpu_s / max(1, res.frames)


def cmd_serve_a2e(args: argparse.Namespace) -> int:
    """Both runs, then the comparison."""
    base = serve.run_serve_bench(args)
    args.no_library = True  # the library comparison is the first run's
    with_a2e = serve.run_serve_bench(args, a2e_size=args.a2e)
    added = cpu_ms_per_frame(with_a2e) - cpu_ms_per_frame(base)
    if args.json:
        print(json.dumps({"without_a2e": asdict(base), "with_a2e": asdict(with_a2e),
                          "a2e_size": args.a2e,
                          "added_server_cpu_ms_per_frame": added}), flush=True)
    else:
        print("== without A2E\n" + serve.report(base, False))
        print(f"== with the {args.a2e} A2E stand-in\n" + serve.report(with_a2e, False))
        print(f"A2E adds {added:.3f} ms of server CPU per frame "
              f"({cpu_ms_per_frame(base):.3f} -> {cpu_ms_per_frame(with_a2e):.3f} ms); "
              f"frame latency p50 {base.latency_p50_ms:.1f} -> {with_a2e.latency_p50_ms:.1f} "
              f"ms, p99 {base.latency_p99_ms:.1f} -> {with_a2e.latency_p99_ms:.1f} ms "
              "(from the audio each frame needs, A2E's look-ahead included)", flush=True)
    return 0 if base.errors == 0 and with_a2e.errors == 0 else 1
