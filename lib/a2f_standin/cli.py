"""``a2f-standin {regression|diffusion|emotion} --out DIR [--size full|small] [--seed N]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from a2f_standin.emotion import generate_emotion
from a2f_standin.generate import KINDS, SIZES, generate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="a2f-standin",
        description="Write a stand-in Audio2Face-3D model folder in NVIDIA's exact format.",
    )
    p.add_argument("kind", choices=(*KINDS, "emotion"), help="model kind (emotion = A2E)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument(
        "--size",
        choices=SIZES,
        default=os.environ.get("A2F_STANDIN_SIZE", "small"),
        help="full = published sizes, small = few vertices (env A2F_STANDIN_SIZE; default small)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("A2F_STANDIN_SEED", "0")),
        help="random seed; same seed gives byte-identical files (env A2F_STANDIN_SEED; default 0)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.kind == "emotion":
            out = generate_emotion(args.out, size=args.size, seed=args.seed)
        else:
            out = generate(args.kind, args.out, size=args.size, seed=args.seed)
    except (ValueError, OSError) as err:
        print(f"a2f-standin: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
