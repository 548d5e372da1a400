"""Prepare the compose stack's S3 store: create the bucket, and fill an empty model prefix
with generated stand-in models so that a fresh ``docker compose up`` serves right away.

Runs once in the ``s3-seed`` service (inference image: boto3 and ``a2f_standin`` inside).
Never overwrites: when the prefix already holds objects (real NVIDIA models, say), it only
reports them. Settings come from the environment (see compose.yaml):
A2F_S3_ENDPOINT_URL, A2F_S3_BUCKET, A2F_S3_PREFIX, A2F_SEED_STANDIN (1/0),
A2F_STANDIN_SIZE (small/full), and the usual AWS_* credentials.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from a2f_standin.generate import generate

log = logging.getLogger("a2f.seed_s3")

# model folder name -> stand-in kind. multi-diffusion is the server's default model; a23 is
# the regression model of the seed's volume.
STANDIN_MODELS = {"multi-diffusion": "diffusion", "a23": "regression"}


def _wait_for_s3(client: Any, endpoint: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as err:
            if time.monotonic() > deadline:
                raise SystemExit(f"seed: S3 at {endpoint} not answering after {timeout_s:.0f} s: "
                                 f"{err}") from err
            time.sleep(1.0)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [seed] %(message)s")
    endpoint = os.environ.get("A2F_S3_ENDPOINT_URL") or None
    bucket = os.environ.get("A2F_S3_BUCKET", "avadot")
    prefix = os.environ.get("A2F_S3_PREFIX", "a2f-models").strip("/")
    seed_flag = os.environ.get("A2F_SEED_STANDIN", "1").strip().lower()
    seed_standin = seed_flag not in {"", "0", "false", "no"}
    size = os.environ.get("A2F_STANDIN_SIZE", "small")

    s3 = boto3.client("s3", endpoint_url=endpoint)
    _wait_for_s3(s3, endpoint or "AWS")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        log.info("creating bucket %s", bucket)
        s3.create_bucket(Bucket=bucket)

    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=1000)
    existing = listing.get("KeyCount", 0)
    if existing:
        log.info("s3://%s/%s/ already holds %d+ objects: leaving them as they are",
                 bucket, prefix, existing)
        return 0
    if not seed_standin:
        log.warning("s3://%s/%s/ is empty and A2F_SEED_STANDIN=0: upload model folders there "
                    "(s3://%s/%s/<model>/model.json ...)", bucket, prefix, bucket, prefix)
        return 0

    with tempfile.TemporaryDirectory(prefix="a2f-seed-") as tmp:
        for model, kind in STANDIN_MODELS.items():
            folder = generate(kind, Path(tmp) / model, size=size)
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            # model.json last: a reader that sees it sees a complete folder.
            files.sort(key=lambda p: p.name == "model.json")
            for path in files:
                key = f"{prefix}/{model}/{path.relative_to(folder).as_posix()}"
                s3.upload_file(str(path), bucket, key)
            log.info("uploaded stand-in %s (%s, %s): %d files to s3://%s/%s/%s/",
                     model, kind, size, len(files), bucket, prefix, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
