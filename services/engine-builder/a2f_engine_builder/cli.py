"""``a2f-engine-builder``: build verified engines for every model on the volume.

Daemon by default (watch the volume, build what is missing or stale); ``--once`` builds what
is needed and exits 0 only if every model then has a valid engine (init-container mode, like
the seed's entrypoint). Every flag can also be given as ``A2F_ENGINE_BUILDER_<FLAG>``; the
seed's ``A2F_MODEL_DATA_PATH``, ``SKIP_TRT_BUILD`` and ``FORCE_TRT_REBUILD`` keep their meaning.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from prometheus_client import CollectorRegistry

from a2f_engine.targets import choose_backend
from a2f_engine_builder.backends import make_backend
from a2f_engine_builder.builder import EngineBuilder
from a2f_engine_builder.config import BACKEND_CHOICES, BuilderConfig
from a2f_engine_builder.engine_cache import RemoteEngineCache
from a2f_engine_builder.metrics import BuilderMetrics
from a2f_engine_builder.watcher import BuildDaemon
from a2f_volume.hashing import HashCache
from a2f_volume.layout import hash_cache_path, list_model_dirs

logger = logging.getLogger("a2f_engine_builder")


def parse_args(argv: Sequence[str] | None, base: BuilderConfig) -> BuilderConfig:
    env = BuilderConfig.env_name
    p = argparse.ArgumentParser(
        prog="a2f-engine-builder",
        description="Build verified TensorRT / ONNX Runtime engines for every model folder.")
    p.add_argument("--models-root", default=str(base.models_root),
                   help="model volume (env A2F_MODEL_DATA_PATH; default %(default)s)")
    p.add_argument("--once", action=argparse.BooleanOptionalAction, default=base.once,
                   help=f"build what is needed, then exit (env {env('once')})")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=base.backend,
                   help=f"engine backend (env {env('backend')}; default %(default)s)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default=base.precision,
                   help=f"TensorRT precision (env {env('precision')}; default %(default)s)")
    p.add_argument("--skip-build", action=argparse.BooleanOptionalAction,
                   default=base.skip_build, help="build nothing, only report (env SKIP_TRT_BUILD)")
    p.add_argument("--force-rebuild", action=argparse.BooleanOptionalAction,
                   default=base.force_rebuild,
                   help="rebuild every model once at start (env FORCE_TRT_REBUILD)")
    p.add_argument("--poll-interval-s", type=float, default=base.poll_interval_s,
                   help=f"full rescan period (env {env('poll_interval_s')}; default %(default)s)")
    p.add_argument("--inotify", action=argparse.BooleanOptionalAction, default=base.inotify,
                   help="inotify wake-ups; --no-inotify for network filesystems "
                        f"(env {env('inotify')}; falls back to polling automatically)")
    p.add_argument("--debounce-s", type=float, default=base.debounce_s,
                   help=f"quiet time after a change (env {env('debounce_s')})")
    p.add_argument("--backoff-initial-s", type=float, default=base.backoff_initial_s,
                   help=f"first retry delay after a failure (env {env('backoff_initial_s')})")
    p.add_argument("--backoff-max-s", type=float, default=base.backoff_max_s,
                   help=f"longest retry delay (env {env('backoff_max_s')})")
    p.add_argument("--metrics-port", type=int, default=base.metrics_port,
                   help=f"Prometheus port, 0 disables (env {env('metrics_port')}; "
                        "default %(default)s)")
    p.add_argument("--metrics-host", default=base.metrics_host,
                   help=f"metrics bind address (env {env('metrics_host')})")
    p.add_argument("--ort-threads", type=int, default=base.ort_threads,
                   help=f"ONNX Runtime threads, 0 = all (env {env('ort_threads')})")
    p.add_argument("--log-level", default=base.log_level,
                   help=f"logging level (env {env('log_level')}; default %(default)s)")
    p.add_argument("--engine-cache", default=base.engine_cache, metavar="s3://BUCKET/PREFIX",
                   help=f"shared engine cache in S3 (env {env('engine_cache')}; default off)")
    p.add_argument("--engine-cache-endpoint-url", default=base.engine_cache_endpoint_url,
                   help=f"S3 endpoint of the engine cache (env "
                        f"{env('engine_cache_endpoint_url')}; default AWS)")
    a = p.parse_args(argv)
    try:
        return BuilderConfig(
            models_root=a.models_root, backend=a.backend, precision=a.precision, once=a.once,
            skip_build=a.skip_build, force_rebuild=a.force_rebuild,
            poll_interval_s=a.poll_interval_s, inotify=a.inotify, debounce_s=a.debounce_s,
            backoff_initial_s=a.backoff_initial_s, backoff_max_s=a.backoff_max_s,
            metrics_port=a.metrics_port, metrics_host=a.metrics_host,
            ort_threads=a.ort_threads, log_level=a.log_level, engine_cache=a.engine_cache,
            engine_cache_endpoint_url=a.engine_cache_endpoint_url)
    except ValueError as err:
        p.error(str(err))
        raise  # unreachable: p.error exits


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
    builder.hash_cache.save()
    if failed:
        logger.error("no valid engine for %d of %d model(s): %s", len(failed), len(folders),
                     ", ".join(failed))
        return 1
    logger.info("all %d model(s) have a valid engine", len(folders))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_args(argv, BuilderConfig.from_env())
    except ValueError as err:  # bad environment variable
        print(f"a2f-engine-builder: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    if cfg.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(cfg.metrics_port, cfg.metrics_host, registry=metrics.registry)
        logger.info("metrics on http://%s:%d/metrics", cfg.metrics_host, cfg.metrics_port)
    cache = HashCache(hash_cache_path(cfg.models_root))
    builder = EngineBuilder(cfg.models_root, backend, cache, metrics)
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
                             backoff_max_s=cfg.backoff_max_s, force_first=cfg.force_rebuild)
        daemon.start()
    stop.wait()
    if daemon is not None:
        daemon.stop()
    cache.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
