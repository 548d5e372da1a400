"""Command line of ``a2f-inference``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from a2f_engine.blas import configure_blas_threads
from a2f_inference.server.app import serve
from a2f_inference.server.config import ServerConfig
from a2f_volume.errors import A2FError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="a2f-inference",
        description="Audio2Face-3D gRPC server: serves every model folder under the models "
        "root on one port (NVIDIA's A2F-3D protocol, health, reflection, admin) and "
        "Prometheus metrics on another. Each flag can be given as the env var shown.")
    ServerConfig.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = ServerConfig.from_args(args)
    except A2FError as err:
        print(f"a2f-inference: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        configure_blas_threads()  # A2F_BLAS_THREADS, default 1: see docs/pipeline-numerics.md
    except A2FError as err:
        print(f"a2f-inference: {err}", file=sys.stderr)
        return 2
    log.info("a2f-inference starting: models root %s, default model %s, port %d",
             config.models_root, config.default_model, config.port)
    try:
        return asyncio.run(serve(config))
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
    except A2FError as err:  # e.g. a TLS file that cannot be used
        log.error("cannot start: %s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
