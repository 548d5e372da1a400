"""Benchmark: ``a2f-model-sync --once`` versus ``aws s3 sync`` on the same server and data.

Run (dev tools: an S3 server and the AWS CLI in its own venv, see docs/model-sync.md)::

    python -m a2f_model_sync.bench --aws .a2f-local/awscli-venv/bin/aws --server weed

Starts an S3-compatible server on 127.0.0.1 (SeaweedFS ``weed mini`` or moto), uploads
full-size stand-in model folders (``a2f_standin.generate``, or ``--standin-dir``), then times
full syncs into empty directories (both tools as separate processes, alternating order per
round) and a no-change resync, and prints wall times and the S3 requests of each pass of
``a2f-model-sync`` (from its pass summary log line).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

CREDS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
BUCKET = "bench-models"
PREFIX = "a2f-models/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"S3 server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.3)
    raise RuntimeError(f"S3 server did not listen on {port} within {timeout_s} s")


@contextlib.contextmanager
def s3_server(kind: str, workdir: Path) -> Iterator[str]:
    port = _free_port()
    if kind == "moto":
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    else:
        weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        extra = [f"-{f}={_free_port()}" for f in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "admin.port", "admin.port.grpc", "s3.port.grpc",
            "s3.port.iceberg", "s3.port.lance", "debug.port", "metricsPort")]
        (workdir / "weed").mkdir()
        cmd = [weed, "mini", f"-dir={workdir / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
               f"-s3.port={port}", *extra]
    with open(workdir / f"{kind}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_port(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _upload(endpoint: str, tree: Path) -> tuple[int, int]:
    import boto3
    from boto3.s3.transfer import TransferConfig

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
    total = 0
    for p in files:
        s3.upload_file(str(p), BUCKET, PREFIX + p.relative_to(tree).as_posix(), Config=cfg)
        total += p.stat().st_size
    return len(files), total


def _timed(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr[-2000:]}")
    return wall, res.stdout + res.stderr


def _requests(log: str) -> str:
    """Requests of every pass of one process (``--once`` confirms a change with a 2nd pass)."""
    found = re.findall(r"requests (.*)$", log, flags=re.MULTILINE)
    return " | ".join(f"pass {i + 1}: {f}" for i, f in enumerate(found)) or "?"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m a2f_model_sync.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aws", default=".a2f-local/awscli-venv/bin/aws",
                    help="the aws CLI executable (its own venv)")
    ap.add_argument("--server", choices=("weed", "moto"), default="weed")
    ap.add_argument("--standin-dir", type=Path,
                    help="existing models tree (<dir>/<model>/...); default: generate full-size")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    args = ap.parse_args(argv)
    aws = shutil.which(args.aws) or args.aws
    if not os.access(aws, os.X_OK):
        print(f"aws CLI not found at {aws}: python3 -m venv .a2f-local/awscli-venv && "
              ".a2f-local/awscli-venv/bin/pip install awscli", file=sys.stderr)
        return 2
    env = dict(os.environ, **CREDS)
    os.environ.update(CREDS)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        tree = args.standin_dir
        if tree is None:
            from a2f_standin import generate

            tree = work / "src"
            print("generating full-size stand-ins ...", flush=True)
            generate("diffusion", tree / "multi-diffusion", size="full")
            generate("regression", tree / "a23", size="full")
        with s3_server(args.server, work) as endpoint:
            nfiles, nbytes = _upload(endpoint, tree)
            print(f"server={args.server} endpoint={endpoint} objects={nfiles} "
                  f"bytes={nbytes} ({nbytes / 2**20:.1f} MiB)")
            src = f"s3://{BUCKET}/{PREFIX}"
            ours_cmd = [sys.executable, "-m", "a2f_model_sync.cli", "--once", "--source", src,
                        "--endpoint-url", endpoint, "--health-port", "-1"]
            aws_cmd = [aws, "s3", "sync", src, "--endpoint-url", endpoint, "--only-show-errors"]
            t_ours: list[float] = []
            t_aws: list[float] = []
            for r in range(args.rounds):
                order = ("ours", "aws") if r % 2 == 0 else ("aws", "ours")
                for who in order:
                    dest = work / f"{who}-{r}"
                    if who == "ours":
                        wall, log = _timed([*ours_cmd, "--dest", str(dest)], env)
                        t_ours.append(wall)
                        print(f"round {r}: a2f-model-sync full sync {wall:.2f} s "
                              f"(requests {_requests(log)})", flush=True)
                    else:
                        wall, _ = _timed([*aws_cmd[:4], str(dest), *aws_cmd[4:]], env)
                        t_aws.append(wall)
                        print(f"round {r}: aws s3 sync full sync      {wall:.2f} s", flush=True)
                    if r < args.rounds - 1:
                        shutil.rmtree(dest)
            last = args.rounds - 1
            wall_nc, log_nc = _timed([*ours_cmd, "--dest", str(work / f"ours-{last}")], env)
            aws_nc, _ = _timed([*aws_cmd[:4], str(work / f"aws-{last}"), *aws_cmd[4:]], env)
        med_o, med_a = statistics.median(t_ours), statistics.median(t_aws)
        print()
        print(f"full sync, median of {args.rounds}: a2f-model-sync {med_o:.2f} s, "
              f"aws s3 sync {med_a:.2f} s, ratio ours/aws {med_o / med_a:.2f}")
        print(f"no-change resync: a2f-model-sync {wall_nc:.2f} s, requests "
              f"{_requests(log_nc)}; aws s3 sync {aws_nc:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
