"""``a2f-engine-builder``: build verified engines for every model on the volume.

Daemon by default (watch the volume, build what is missing or stale); ``--once`` builds what
is needed and exits 0 only if every model then has a valid engine (init-container mode, like
the seed's entrypoint). Every flag can also be given as ``A2F_ENGINE_BUILDER_<FLAG>``; the
seed's ``A2F_MODEL_DATA_PATH``, ``SKIP_TRT_BUILD`` and ``FORCE_TRT_REBUILD`` keep their meaning.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

from prometheus_client import CollectorRegistry

from a2f_engine.blas import configure_blas_threads
from a2f_engine.targets import choose_backend
from a2f_engine_builder.backends import make_backend
from a2f_engine_builder.builder import EngineBuilder
from a2f_engine_builder.config import ENV, BuilderConfig
from a2f_engine_builder.engine_cache import RemoteEngineCache
from a2f_engine_builder.metrics import BuilderMetrics
from a2f_engine_builder.serving import ServingComposer
from a2f_engine_builder.watcher import BuildDaemon
from a2f_volume.errors import A2FError
from a2f_volume.hashing import HashCache
from a2f_volume.layout import hash_cache_path, list_model_dirs

logger = logging.getLogger("a2f_engine_builder")


#: Help of each flag; the variables a flag's setting is also read from are appended.
FLAG_HELP = {
    "models_root": "model volume (default /data/models)",
    "backend": "engine backend (default auto)",
    "precision": "TensorRT precision (default fp32)",
    "once": "build what is needed, then exit",
    "skip_build": "build nothing, only report (also the seed's SKIP_TRT_BUILD)",
    "force_rebuild": "rebuild every model once at start (also the seed's FORCE_TRT_REBUILD)",
    "poll_interval_s": "full rescan period (default 30)",
    "inotify": "inotify wake-ups; --no-inotify for network filesystems (falls back to "
               "polling automatically)",
    "debounce_s": "quiet time after a change (default 2)",
    "backoff_initial_s": "first retry delay after a failure (default 10)",
    "backoff_max_s": "longest retry delay (default 600)",
    "metrics_port": "Prometheus port, -1 disables, 0 picks a free one (default 9102)",
    "metrics_host": "metrics bind address (default 0.0.0.0)",
    "ort_threads": "ONNX Runtime threads, 0 = all (default 0)",
    "log_level": "logging level (default INFO)",
    "engine_cache_keep": "cached engines no version uses, kept for rollbacks (default 1)",
    "sweep_interval_s": "period of the sweep of crashed writers' temp files (default 600)",
    "engine_cache": "shared engine cache s3://BUCKET/PREFIX (default off)",
    "engine_cache_endpoint_url": "S3 endpoint of the engine cache (default AWS)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="a2f-engine-builder",
        description="Build verified TensorRT / ONNX Runtime engines for every model folder. "
                    "A flag wins over its environment variable.")
    ENV.add_flags(p, BuilderConfig, FLAG_HELP)
    return p


def parse_args(argv: Sequence[str] | None,
               environ: Mapping[str, str] | None = None) -> BuilderConfig:
    """The settings: defaults, then the environment, then the flags given.

    A bad environment variable raises ValueError (``ConfigError``) naming it and what is
    allowed; a bad flag value is a usage error (exit 2 with the message).
    """
    base = BuilderConfig.from_env(environ)
    parser = build_parser()
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return dataclasses.replace(base, **given)
    except ValueError as err:
        parser.error(str(err))


def run_once(builder: EngineBuilder, skip: bool, force: bool) -> int:
    """Build every model once; 0 only if every model ends with a valid engine."""
    folders = list_model_dirs(builder.models_root)
    if not folders:
        logger.warning("no model folders under %s", builder.models_root)
    failed = []
    builder.sweep_temps(folders)
    for folder in folders:
        if skip:
            outcome = builder.status(folder)
            builder.metrics.init_model(folder.name)
            if not outcome.ok:
                builder.metrics.builds.labels(folder.name, "skipped").inc()
                logger.warning("%s: SKIP_TRT_BUILD is set, not building: %s", folder.name,
                               outcome.reason)
            continue
        outcome = builder.ensure(folder, force=force)
        if not outcome.ok:
            failed.append(outcome.model)
    builder.collect_engine_cache()
    builder.hash_cache.save()
    if failed:
        logger.error("no valid engine for %d of %d model(s): %s", len(failed), len(folders),
                     ", ".join(failed))
        return 1
    logger.info("all %d model(s) have a valid engine", len(folders))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except ValueError as err:  # a bad setting (flag or environment variable)
        print(f"a2f-engine-builder: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        configure_blas_threads()  # A2F_BLAS_THREADS (default 1): verification products
    except A2FError as err:
        print(f"a2f-engine-builder: {err}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        backend_name, why = choose_backend(cfg.backend)
        backend = make_backend(backend_name, cfg.precision, cfg.ort_threads)
    except (RuntimeError, ValueError) as err:
        logger.error("cannot use backend %s: %s", cfg.backend, err)
        return 2
    logger.info("Initializing engine builder: root %s, backend %s (%s), precision %s",
                cfg.models_root, backend_name, why, cfg.precision)
    metrics = BuilderMetrics(CollectorRegistry())
    if cfg.metrics_port >= 0:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(cfg.metrics_port, cfg.metrics_host,
                                            registry=metrics.registry)
        logger.info("metrics on http://%s:%d/metrics", cfg.metrics_host,
                    server.server_address[1])
    cache = HashCache(hash_cache_path(cfg.models_root))
    builder = EngineBuilder(cfg.models_root, backend, cache, metrics,
                            engine_cache_keep=cfg.engine_cache_keep,
                            serving=ServingComposer(cfg.diffusion_noise,
                                                    cfg.diffusion_noise_seed))
    if cfg.engine_cache:
        builder.remote_cache = RemoteEngineCache(
            cfg.engine_cache, metrics.registry,
            endpoint_url=cfg.engine_cache_endpoint_url or None)
        logger.info("shared engine cache: %s", cfg.engine_cache)

    if cfg.once:
        rc = run_once(builder, cfg.skip_build, cfg.force_rebuild)
        logger.info("done in %.3fs (exit %d)", time.monotonic() - t0, rc)
        return rc
    if cfg.skip_build:
        logger.warning("SKIP_TRT_BUILD is set: the builder idles (metrics only)")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()
        if builder.remote_cache is not None:
            builder.remote_cache.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon = None
    if not cfg.skip_build:
        daemon = BuildDaemon(builder, poll_interval_s=cfg.poll_interval_s,
                             debounce_s=cfg.debounce_s, inotify=cfg.inotify,
                             backoff_initial_s=cfg.backoff_initial_s,
                             backoff_max_s=cfg.backoff_max_s, force_first=cfg.force_rebuild,
                             sweep_interval_s=cfg.sweep_interval_s)
        daemon.start()
    stop.wait()
    if daemon is not None:
        daemon.stop()
    cache.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
