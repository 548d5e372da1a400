"""``a2f-model-sync``: mirror ``s3://BUCKET/PREFIX`` (or ``file:///DIR``) into a models volume.

Exit codes: 0 volume matches the source (``--once``) or clean stop on SIGTERM (daemon);
1 the volume does not match the source after ``--once``'s attempts; 2 bad configuration;
3 ``--check-ready``: not ready.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from a2f_model_sync.config import ENV, ENV_PREFIX, SyncConfig
from a2f_model_sync.connect import open_source
from a2f_model_sync.health import HealthServer
from a2f_model_sync.metrics import SyncMetrics
from a2f_model_sync.readiness import ReadinessGate
from a2f_model_sync.source import SourceError
from a2f_model_sync.sync import ModelSync, RunReport
from a2f_volume.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


#: Help of each flag; the variables a flag's setting is also read from are appended.
FLAG_HELP = {
    "source": "s3://BUCKET/PREFIX or file:///DIR",
    "dest": "models root (default /data/models)",
    "once": "one pass; exit 0 only when the volume matches the source",
    "interval_s": "daemon polling interval (default 60)",
    "jitter_fraction": "random extra of up to this fraction of the interval (default 0.1)",
    "endpoint_url": "S3-compatible endpoint URL (MinIO, ...)",
    "delete": "remove models that are gone from the source (default: keep them)",
    "adopt": "move a plain model directory (the seed's layout) into the versions store once "
             "the source can be listed, keeping files that match it (default); --no-adopt "
             "refuses plain directories (error kind plain_folder)",
    "max_concurrency": "parallel GETs (default 10)",
    "multipart_chunk_bytes": "ranged-GET size for large objects (default 8 MiB)",
    "max_bytes_per_s": "bandwidth limit, 0 = none (default)",
    "health_host": "listen address of the health endpoints (default 0.0.0.0)",
    "health_port": "/ready, /healthz, /metrics port (default 9103; -1 disables)",
    "grace_s": "old versions live at least this long (default 600)",
    "keep_versions": "old versions kept at most (default 2)",
    "engine_cache_keep": "cached engines no version uses, kept for rollbacks (default 1)",
    "once_attempts": "passes tried by --once (default 3)",
    "retry_max_s": "longest back-off between failed passes of the daemon (default 300)",
    "s3_max_attempts": "attempts per S3 request with exponential back-off (default 6)",
    "log_level": "DEBUG, INFO (default), WARNING, ERROR",
}


def build_parser() -> argparse.ArgumentParser:
    env = ENV_PREFIX
    p = argparse.ArgumentParser(
        prog="a2f-model-sync",
        description="Mirror model folders from S3 into the model volume, publishing each "
        "changed model as a complete version switched atomically. Every flag doubles as an "
        f"environment variable {env}<FLAG> (e.g. {env}INTERVAL_S); a flag wins.",
    )
    ENV.add_flags(p, SyncConfig, FLAG_HELP)
    p.add_argument("--check-ready", action="store_true",
                   help="exit 0 if a running daemon on --health-port reports ready (for an "
                   "exec probe), else 3")
    return p


def _config(args: argparse.Namespace) -> SyncConfig:
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "check_ready"}
    return SyncConfig.from_env(**overrides)


def check_ready(port: int) -> int:
    url = f"http://127.0.0.1:{port}/ready"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return 0 if resp.status == 200 else 3
    except (urllib.error.URLError, OSError) as err:
        print(f"not ready: {url}: {err}", file=sys.stderr)
        return 3


def run_once(sync: ModelSync, attempts: int, stop: threading.Event) -> int:
    """Passes until one changes nothing (the volume provably matches the listing)."""
    delay = 2.0
    report: RunReport | None = None
    for attempt in range(1, attempts + 1):
        report = sync.run()
        if report.result == "interrupted" or stop.is_set():
            return 1
        if report.matched and not report.published and not report.removed:
            return 0
        if report.matched:
            continue  # something changed: one more pass confirms nothing changed meanwhile
        if attempt < attempts:
            logger.warning("pass %d/%d failed; retrying in %.0f s", attempt, attempts, delay)
            if stop.wait(delay):
                return 1
            delay *= 2
    if report is not None and report.matched:
        return 0  # the last pass published and matched the source
    return 1


def run_daemon(sync: ModelSync, config: SyncConfig, health: HealthServer | None,
               stop: threading.Event) -> int:
    """Passes every interval; failed passes retried with exponential back-off and jitter.

    Readiness (:mod:`.readiness`) is checked before the first pass, so a volume that already
    holds complete models is ready at once even if the source cannot be reached.
    """
    gate = ReadinessGate(sync.root, sync.metrics, health.ready if health is not None else None)
    gate.check(listed=None)
    failures = 0
    rng = random.Random()
    while not stop.is_set():
        report = sync.run()
        if report.result == "interrupted":
            break
        gate.check(report.listed, sync.source_problem(report))
        if report.matched:
            if failures:
                logger.info("pass succeeded after %d failed pass(es)", failures)
            failures = 0
            delay = config.interval_s * (1 + rng.uniform(0, config.jitter_fraction))
        else:
            failures += 1
            delay = min(config.retry_max_s, 5.0 * 2 ** min(failures - 1, 10))
            delay *= 1 + rng.uniform(0, config.jitter_fraction)
            logger.warning("pass failed (%d in a row); the published models keep serving; "
                           "next try in %.0f s", failures, delay)
        stop.wait(delay)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args) if not args.check_ready else None
    except InvalidArgumentError as err:
        print(f"a2f-model-sync: {err.message}", file=sys.stderr)
        return 2
    if args.check_ready:
        port = args.health_port
        if port is None:
            try:
                port = SyncConfig.from_env(source="file:///").health_port
            except InvalidArgumentError:
                port = 9103
        return check_ready(port)
    assert config is not None
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        source = open_source(config.source, config.endpoint_url, config.max_concurrency,
                             max_attempts=config.s3_max_attempts)
    except SourceError as err:
        print(f"a2f-model-sync: {err.message}", file=sys.stderr)
        return 2
    logger.info("syncing %s -> %s (%s)", config.source, config.dest, source.describe())
    registry = CollectorRegistry()
    metrics = SyncMetrics(registry)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping (downloads in progress are discarded)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sync = ModelSync(config, source, metrics, stop)
    health: HealthServer | None = None
    try:
        if config.once:
            return run_once(sync, config.once_attempts, stop)
        if config.health_port >= 0:
            health = HealthServer(config.health_host, config.health_port, registry)
            health.start()
        return run_daemon(sync, config, health, stop)
    finally:
        if health is not None:
            health.stop()
        source.close()


if __name__ == "__main__":
    sys.exit(main())
