"""Benchmark of a2f-engine-builder on full-size stand-ins (ONNX Runtime backend).

Prints: the build time of each model (from its engine record), the wall time of the first
``--once`` run, of a no-op restart (hash cache warm) and of a no-op restart with the hash
cache removed (every ONNX and engine re-hashed). Figures only; compare them as ratios.

    .venv/bin/python -m tests.engine_builder.bench_builder [--threads N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from standin_fixtures import cached_standin  # noqa: E402

from a2f_volume.engine_record import read_record  # noqa: E402


def _link_tree(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("."):
            os.link(f, dest / f.name)


def _run(root: Path, threads: int) -> tuple[float, float]:
    """(wall seconds of the process, seconds the builder itself reports after start-up)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "a2f_engine_builder.cli", "--models-root",
                          str(root), "--once", "--metrics-port", "0", "--ort-threads",
                          str(threads)], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"builder failed:\n{res.stderr}")
    m = re.search(r"done in ([0-9.]+)s", res.stderr)
    return wall, float(m.group(1)) if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="no-op restarts to time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="a2f-bench-") as tmp:
        root = Path(tmp) / "models"
        for kind, name in (("regression", "mark"), ("diffusion", "multi-diffusion")):
            _link_tree(cached_standin(kind, "full"), root / name)
        first, first_inner = _run(root, args.threads)
        for name in ("mark", "multi-diffusion"):
            onnx = root / name / "network.onnx"
            rec = read_record(root / name / "network.ort.json")
            print(f"build {name}: {rec.build_seconds:.2f} s (onnx {onnx.stat().st_size / 1e6:.1f}"
                  f" MB, engine {rec.engine_size / 1e6:.1f} MB, verify max abs err "
                  f"{rec.verification['max_abs_error']:.2g})")
        print(f"first --once run, both built: wall {first:.2f} s, builder {first_inner:.2f} s")
        warm = [_run(root, args.threads) for _ in range(args.repeat)]
        print(f"no-op restart, hash cache warm (min of {args.repeat}): wall "
              f"{min(w for w, _ in warm):.2f} s, builder {min(i for _, i in warm):.3f} s")
        cold = []
        for _ in range(args.repeat):
            (root / ".a2f" / "hash-cache.json").unlink()
            cold.append(_run(root, args.threads))
        print(f"no-op restart, hash cache removed (min of {args.repeat}): wall "
              f"{min(w for w, _ in cold):.2f} s, builder {min(i for _, i in cold):.3f} s")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import a2f_engine_builder.cli, onnxruntime"],
                       check=True)
        print(f"interpreter start + imports alone: {time.perf_counter() - t0:.2f} s")
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
