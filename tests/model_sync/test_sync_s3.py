"""model-sync against real S3-compatible servers on loopback (moto; SeaweedFS at the end)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from a2f_volume import versions

from .conftest import (
    free_port,
    make_sync,
    model_files,
    read_consistent,
    s3_client,
    staging_leftovers,
    sync_once,
    upload_model,
)

pytestmark = pytest.mark.s3

PREFIX = "a2f-models/"


def src(bucket: str) -> str:
    return f"s3://{bucket}/{PREFIX}"


def test_first_sync_publishes_each_model_as_a_versioned_symlink(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    upload_model(s3, bucket, PREFIX, "multi-diffusion", model_files(1))
    upload_model(s3, bucket, PREFIX, "a23", model_files(1, seed=7))
    report = sync_once(models_root, src(bucket), moto_url)
    assert report.matched, report.errors
    assert sorted(report.published) == ["a23", "multi-diffusion"]
    for model in ("a23", "multi-diffusion"):
        folder = models_root / model
        assert folder.is_symlink() and versions.is_managed(folder)
        assert read_consistent(folder) == 1
        record = versions.read_record(folder)
        assert record is not None and record.model == model
        assert {o.path for o in record.objects} == set(model_files(1))
        assert all(o.etag.startswith('"') and o.size > 0 for o in record.objects)
        # boto3 uploads with a CRC32 by default: recorded (and verified) at download time
        assert all("CRC32" in o.checksum for o in record.objects), record.objects
        assert versions.current_version(folder) == record.version_id
    assert staging_leftovers(models_root) == []


def test_no_change_resync_lists_once_and_downloads_nothing(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(1))
    assert sync_once(models_root, src(bucket), moto_url).matched
    before = versions.current_version(models_root / "m")
    sync, registry = make_sync(models_root, src(bucket), moto_url)
    report = sync.run()
    assert report.matched and not report.published and report.unchanged == ["m"]
    requests = getattr(sync.source, "requests", {})
    assert requests == {"ListObjectsV2": 1}, requests
    assert registry.get_sample_value("a2f_model_sync_objects_downloaded_total") == 0
    assert versions.current_version(models_root / "m") == before


def test_update_of_one_file_with_the_same_size_is_detected(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    files = model_files(1)
    upload_model(s3, bucket, PREFIX, "m", files)
    assert sync_once(models_root, src(bucket), moto_url).matched
    old_dir = versions.version_dir_of(models_root / "m")
    onnx = bytearray(files["network.onnx"])
    onnx[-1] ^= 0xFF  # same size, different bytes (a retrained network)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}m/network.onnx", Body=bytes(onnx))
    sync, registry = make_sync(models_root, src(bucket), moto_url)
    report = sync.run()
    assert report.matched and list(report.published) == ["m"]
    assert report.objects_downloaded == 1  # only the changed object
    assert (models_root / "m" / "network.onnx").read_bytes() == bytes(onnx)
    assert old_dir is not None and old_dir.is_dir()  # previous version still readable (grace)
    assert (old_dir / "network.onnx").read_bytes() == files["network.onnx"]
    assert registry.get_sample_value("a2f_model_sync_model_version_info", {
        "model": "m", "version": report.published["m"]}) == 1


def test_multipart_uploaded_objects_sync_with_ranged_gets(
        s3: Any, bucket: str, moto_url: str, models_root: Path, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    files = model_files(1, n_files=2, size=12 << 20)
    local = tmp_path / "onnx"
    local.write_bytes(files["network.onnx"])
    s3.upload_file(str(local), bucket, f"{PREFIX}m/network.onnx", Config=TransferConfig(
        multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
    upload_model(s3, bucket, PREFIX, "m", {k: v for k, v in files.items() if k != "network.onnx"})
    etag = s3.head_object(Bucket=bucket, Key=f"{PREFIX}m/network.onnx")["ETag"]
    assert etag.endswith('-3"')  # really a multipart object
    sync, _ = make_sync(models_root, src(bucket), moto_url, multipart_chunk_bytes=4 << 20)
    report = sync.run()
    assert report.matched, report.errors
    assert read_consistent(models_root / "m") == 1
    # two 12 MiB objects in three 4 MiB ranges each, and model.json
    assert sync.source.requests["GetObject"] == 3 + 3 + 1  # type: ignore[attr-defined]


def test_bytes_that_fail_the_s3_checksum_are_never_published(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    """Corruption in transit is simulated by a botocore hook that rewrites the checksum the
    (real) server announced for one object; everything else is the real exchange."""
    upload_model(s3, bucket, PREFIX, "m", model_files(1))
    sync, registry = make_sync(models_root, src(bucket), moto_url)

    def corrupt(parsed: dict[str, Any], **kw: Any) -> None:
        if parsed.get("ChecksumCRC32"):
            parsed["ChecksumCRC32"] = "AAAAAA=="

    client = sync.source.client  # type: ignore[attr-defined]
    client.meta.events.register("after-call.s3.GetObject", corrupt)
    report = sync.run()
    assert [k for k, _ in report.errors] == ["checksum"], report.errors
    assert "fail the CRC32 check" in report.errors[0][1]
    assert registry.get_sample_value("a2f_model_sync_errors_total", {"kind": "checksum"}) == 1
    assert not (models_root / "m").exists() and staging_leftovers(models_root) == []


def test_files_written_by_other_services_survive_updates(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(1))
    assert sync_once(models_root, src(bucket), moto_url).matched
    folder = models_root / "m"
    (folder / "network.trt").write_bytes(b"engine")
    (folder / "network.trt.json").write_text('{"onnx_sha256": "x"}')
    (folder / ".gpu_arch").write_text("sm_75")
    (folder / "cache").mkdir()
    (folder / "cache" / "k.bin").write_bytes(b"k")
    upload_model(s3, bucket, PREFIX, "m", model_files(2))
    assert sync_once(models_root, src(bucket), moto_url).matched
    assert read_consistent(folder) == 2
    assert (folder / "network.trt").read_bytes() == b"engine"
    assert (folder / ".gpu_arch").read_text() == "sm_75"
    assert (folder / "cache" / "k.bin").read_bytes() == b"k"
    # carried over as hardlinks: no copy of large engines
    old = next(d for d, _ in versions.list_versions(models_root, "m"))
    assert os.stat(old / "network.trt").st_ino == os.stat(folder / "network.trt").st_ino


def test_new_model_added_and_removed_with_and_without_delete(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    upload_model(s3, bucket, PREFIX, "a", model_files(1))
    assert sync_once(models_root, src(bucket), moto_url).matched
    upload_model(s3, bucket, PREFIX, "b", model_files(1, seed=3))
    report = sync_once(models_root, src(bucket), moto_url)
    assert list(report.published) == ["b"] and report.unchanged == ["a"]
    assert read_consistent(models_root / "b") == 1
    for key in model_files(1):
        s3.delete_object(Bucket=bucket, Key=f"{PREFIX}b/{key}")
    report = sync_once(models_root, src(bucket), moto_url)
    assert report.matched and report.kept_without_delete == ["b"]
    assert read_consistent(models_root / "b") == 1  # kept without --delete
    report = sync_once(models_root, src(bucket), moto_url, delete=True, grace_s=0,
                       keep_versions=0)
    assert report.matched and report.removed == ["b"]
    assert not (models_root / "b").exists() and not (models_root / "b").is_symlink()
    assert not (models_root / ".a2f" / "versions" / "b").exists()  # collected (no lease)
    assert read_consistent(models_root / "a") == 1


def test_plain_folder_is_refused_with_no_adopt(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(2))
    plain = models_root / "m"
    plain.mkdir()
    (plain / "model.json").write_text("{}")
    report = sync_once(models_root, src(bucket), moto_url, adopt=False)
    assert not report.matched
    kinds = [k for k, _ in report.errors]
    assert kinds == ["plain_folder"]
    assert "--adopt" in report.errors[0][1] and str(plain) in report.errors[0][1]
    assert not plain.is_symlink() and (plain / "model.json").read_text() == "{}"


def test_plain_folder_is_adopted_by_default_keeping_files_that_match_the_source(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    files = model_files(2)
    upload_model(s3, bucket, PREFIX, "m", files)
    plain = models_root / "m"
    for rel, data in files.items():  # the seed's download: the same bytes, a plain folder
        (plain / rel).parent.mkdir(parents=True, exist_ok=True)
        (plain / rel).write_bytes(data)
    (plain / "model.json").write_text("{}")  # one file differs from the source
    (plain / "network.trt").write_bytes(b"engine")
    report = sync_once(models_root, src(bucket), moto_url)
    assert report.matched, report.errors
    assert report.objects_downloaded == 1  # only the file that differs
    assert versions.is_managed(plain) and read_consistent(plain) == 2
    assert (plain / "model.json").read_bytes() == files["model.json"]
    assert (plain / "network.trt").read_bytes() == b"engine"  # not an S3 object: carried


def test_access_denied_and_missing_bucket_give_their_messages(
        s3: Any, bucket: str, moto_url: str, models_root: Path, tmp_path: Path) -> None:
    report = sync_once(models_root, "s3://no-such-bucket-here/a2f-models/", moto_url)
    assert report.result == "error"
    (kind, msg), = report.errors
    assert kind == "no_such_bucket"
    for part in ("no-such-bucket-here", "prefix=a2f-models/", f"endpoint={moto_url}",
                 "credentials=env"):
        assert part in msg, msg
    report = sync_once(models_root, f"s3://{bucket}/nothing-here/", moto_url)
    (kind, msg), = report.errors
    assert kind == "empty_prefix" and "nothing-here/" in msg


def test_unreachable_s3_keeps_the_published_models_and_says_where(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(1))
    assert sync_once(models_root, src(bucket), moto_url).matched
    before = versions.current_version(models_root / "m")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    report = sync_once(models_root, src(bucket), dead, s3_max_attempts=2)
    (kind, msg), = report.errors
    assert kind == "unreachable"
    for part in ("S3 unreachable", f"bucket={bucket}", f"endpoint={dead}", "credentials=env"):
        assert part in msg, msg
    assert versions.current_version(models_root / "m") == before
    assert read_consistent(models_root / "m") == 1


def test_throttling_is_retried_with_backoff_then_reported(models_root: Path) -> None:
    """moto cannot throttle: a loopback HTTP server answers every request like a throttling
    S3 (503 SlowDown with S3's XML error body)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    class SlowDown(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                    b"<Message>Please reduce your request rate.</Message></Error>")
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowDown)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        report = sync_once(models_root, "s3://busy-bucket/a2f-models/", url, s3_max_attempts=3)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    (kind, msg), = report.errors
    assert kind == "throttled" and "SlowDown" in msg and "bucket=busy-bucket" in msg
    assert len(hits) >= 3  # the first try and the retries (with back-off) by botocore


def test_access_denied_names_bucket_prefix_endpoint_and_credentials(
        models_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A moto server with IAM enforcement: a user without any policy is denied."""
    import subprocess
    import sys

    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import boto3

        deadline = time.monotonic() + 30
        while True:
            try:
                iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1")
                iam.create_user(UserName="reader")  # unauthenticated action 1
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        key = iam.create_access_key(UserName="reader")["AccessKey"]  # 2
        s3 = s3_client(url)
        s3.create_bucket(Bucket="locked-bucket")  # 3
        s3.put_object(Bucket="locked-bucket", Key="a2f-models/m/model.json", Body=b"{}")  # 4
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        report = sync_once(models_root, "s3://locked-bucket/a2f-models/", url)
    finally:
        proc.terminate()
        proc.wait(10)
    (kind, msg), = report.errors
    assert kind == "access_denied", report.errors
    for part in ("access denied", "bucket=locked-bucket", "prefix=a2f-models/",
                 f"endpoint={url}", "credentials=env"):
        assert part in msg, msg
    assert not (models_root / "m").exists()


def test_object_replaced_mid_download_is_fetched_again(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    chunk = 256 << 10
    old = model_files(1, n_files=2, size=6 * chunk)
    upload_model(s3, bucket, PREFIX, "m", old)
    new_onnx = b"gen=99999999\n" + os.urandom(len(old["network.onnx"]) - 13)
    sync, registry = make_sync(models_root, src(bucket), moto_url,
                               multipart_chunk_bytes=chunk, max_concurrency=1,
                               max_bytes_per_s=2 << 20)
    started = threading.Event()
    requests: list[str] = []

    def on_request(op: str) -> None:
        requests.append(op)
        if op == "GetObject" and not started.is_set():
            started.set()

    sync.source.on_request = on_request  # type: ignore[attr-defined]

    def replace_soon() -> None:
        started.wait(10)
        time.sleep(0.3)  # a few ranges of the old object are in
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}m/network.onnx", Body=new_onnx)

    t = threading.Thread(target=replace_soon)
    t.start()
    report = sync.run()
    t.join()
    assert report.matched, report.errors
    restarts = registry.get_sample_value("a2f_model_sync_download_restarts_total")
    assert restarts is not None and restarts >= 1
    got = (models_root / "m" / "network.onnx").read_bytes()
    assert hashlib.sha256(got).digest() in (hashlib.sha256(new_onnx).digest(),)
    record = versions.read_record(models_root / "m")
    assert record is not None
    etag = s3.head_object(Bucket=bucket, Key=f"{PREFIX}m/network.onnx")["ETag"]
    assert record.by_path()["network.onnx"].etag == etag


def test_reader_never_sees_an_inconsistent_set_during_updates(
        s3: Any, bucket: str, moto_url: str, models_root: Path) -> None:
    upload_model(s3, bucket, PREFIX, "m", model_files(0, n_files=4, size=64 << 10))
    assert sync_once(models_root, src(bucket), moto_url).matched
    stop = threading.Event()
    seen: list[list[int]] = [[], []]
    failures: list[str] = []

    def reader(out: list[int]) -> None:
        while not stop.is_set():
            try:
                with versions.pin(models_root / "m") as real:
                    out.append(read_consistent(real))
            except Exception as err:
                failures.append(repr(err))

    threads = [threading.Thread(target=reader, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    try:
        for gen in range(1, 9):
            upload_model(s3, bucket, PREFIX, "m", model_files(gen, n_files=4, size=64 << 10))
            # aggressive GC: every unleased old version goes at once
            report = sync_once(models_root, src(bucket), moto_url, grace_s=0, keep_versions=0)
            assert report.matched, report.errors
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    for out in seen:
        assert out == sorted(out)  # a reader never goes back to an older version
    assert len({g for out in seen for g in out}) >= 2  # the readers did observe switches
    assert read_consistent(models_root / "m") == 8
    assert len(versions.list_versions(models_root, "m")) <= 2  # GC kept up


@pytest.mark.slow
def test_seaweedfs_first_sync_same_size_update_and_no_change(
        weed_url: str, models_root: Path) -> None:
    s3 = s3_client(weed_url)
    s3.create_bucket(Bucket="weedmodels")
    files = model_files(1, n_files=3, size=3 << 20)
    upload_model(s3, "weedmodels", PREFIX, "multi-diffusion", files)
    src_url = f"s3://weedmodels/{PREFIX}"
    report = sync_once(models_root, src_url, weed_url, multipart_chunk_bytes=1 << 20)
    assert report.matched, report.errors
    assert read_consistent(models_root / "multi-diffusion") == 1
    files2 = model_files(2, n_files=3, size=3 << 20)
    assert len(files2["network.onnx"]) == len(files["network.onnx"])
    upload_model(s3, "weedmodels", PREFIX, "multi-diffusion", files2)
    report = sync_once(models_root, src_url, weed_url, multipart_chunk_bytes=1 << 20)
    assert report.matched and list(report.published) == ["multi-diffusion"]
    assert read_consistent(models_root / "multi-diffusion") == 2
    sync, _ = make_sync(models_root, src_url, weed_url)
    report = sync.run()
    assert report.matched and not report.published
    assert getattr(sync.source, "requests", {}) == {"ListObjectsV2": 1}
    report = sync_once(models_root, "s3://no-such-weed-bucket/x/", weed_url)
    assert [k for k, _ in report.errors] == ["no_such_bucket"]
