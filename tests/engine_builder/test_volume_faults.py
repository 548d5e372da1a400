"""The engine-builder on a volume that changes under it: a build keeps its version, cached
engines stay bounded, temp files of dead builders are swept. Real files, real ONNX Runtime
builds, model-sync publishing from a local source directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from a2f_engine.targets import onnxruntime_target
from a2f_engine_builder import builder as builder_module
from a2f_engine_builder.backends import OnnxRuntimeBackend
from a2f_engine_builder.builder import Outcome, remove_stale_temps
from a2f_engine_builder.cli import run_once
from a2f_model_sync.config import SyncConfig
from a2f_model_sync.connect import open_source
from a2f_model_sync.metrics import SyncMetrics
from a2f_model_sync.sync import ModelSync
from a2f_volume import versions
from a2f_volume.engine_record import valid_engine
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths, engines_dir, temp_name

from .helpers import builder_for, make_model

ORT = "onnxruntime"


def sync_pass(source: Path, root: Path, **kw: Any) -> None:
    config = SyncConfig(source=f"file://{source}", dest=str(root), health_port=-1, **kw)
    sync = ModelSync(config, open_source(config.source), SyncMetrics(CollectorRegistry()))
    report = sync.run()
    assert report.matched, report.errors


def publish_revision(source: Path, root: Path, seed: int, **kw: Any) -> Path:
    """Put revision ``seed`` of model m in the source, sync it; the new version directory."""
    shutil.rmtree(source / "m", ignore_errors=True)
    make_model(source, "m", seed=seed)
    sync_pass(source, root, **kw)
    vdir = versions.version_dir_of(root / "m")
    assert vdir is not None
    return vdir


def is_valid(folder: Path) -> bool:
    return valid_engine(ModelPaths(folder), ORT, onnxruntime_target(), HashCache()) is not None


class GatedBackend(OnnxRuntimeBackend):
    """Fake timing only: the real ONNX Runtime build, started and held at a gate by the test."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.started = threading.Event()
        self.release = threading.Event()

    def build(self, onnx: Path, folder: Path, out: Path, timing_cache_dir: Path
              ) -> dict[str, Any]:
        self.started.set()
        assert self.release.wait(120), "the test never opened the gate"
        return super().build(onnx, folder, out, timing_cache_dir)


def test_build_with_grace_0_keeps_its_version_while_a_new_one_lands(tmp_path: Path) -> None:
    source, root = tmp_path / "source", tmp_path / "models"
    root.mkdir()
    v1 = publish_revision(source, root, seed=1, grace_s=0.0, keep_versions=0)
    backend = GatedBackend()
    builder = builder_for(root, backend=backend)
    result: list[Outcome] = []
    worker = threading.Thread(target=lambda: result.append(builder.ensure(root / "m")))
    worker.start()
    try:
        assert backend.started.wait(120)
        v2 = publish_revision(source, root, seed=2, grace_s=0.0, keep_versions=0)
        assert v2 != v1
        assert (v1 / "network.onnx").is_file()  # pinned by the build: not collected
    finally:
        backend.release.set()
        worker.join(timeout=300)
    (outcome,) = result
    assert outcome.ok, outcome.reason
    assert is_valid(v1)  # the engine landed in the version it was built for
    assert not (v2 / "network.ort").exists()
    sync_pass(source, root, grace_s=0.0, keep_versions=0)  # unpinned now: collected
    assert not v1.exists()


def test_three_onnx_revisions_leave_a_bounded_engine_cache(tmp_path: Path) -> None:
    source, root = tmp_path / "source", tmp_path / "models"
    root.mkdir()
    builder = builder_for(root)  # engine_cache_keep defaults to 1
    live = []
    for seed in (1, 2, 3):
        live.append(publish_revision(source, root, seed=seed, grace_s=0.0, keep_versions=0))
        assert run_once(builder, skip=False, force=False) == 0
    cached = sorted(p.name for p in engines_dir(root).iterdir() if p.suffix == ".ort")
    assert len(cached) == 2, cached  # the live version's engine + 1 unused one
    assert len(versions.list_versions(root, "m")) == 1
    rec = valid_engine(ModelPaths(root / "m"), ORT, onnxruntime_target(), HashCache())
    assert rec is not None
    assert f"{rec.onnx_sha256}-{rec.target_fingerprint}.ort" in cached
    # the engine served from the live version is untouched by the collection
    assert is_valid(live[-1])


def test_temp_files_are_swept_by_writer_liveness_and_age_not_by_our_pid(
        tmp_path: Path) -> None:
    started = builder_module.PROCESS_STARTED
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)

    def temp(pid: int, mtime: float) -> Path:
        name = temp_name("network.ort").replace(f"-{os.getpid()}-", f"-{pid}-")
        p = tmp_path / name
        p.write_bytes(b"partial")
        os.utime(p, (mtime, mtime))
        return p

    now = time.time()
    ours_earlier = temp(os.getpid(), started - 60)  # same pid, written before we started
    ours_live = temp(os.getpid(), now)  # being written by this process
    dead_writer = temp(dead_pid, now)
    live_other = temp(os.getppid(), now)
    ancient_live = temp(os.getppid(), now - 2 * builder_module.STALE_TEMP_AGE_S)
    assert remove_stale_temps(tmp_path) == 3
    assert not ours_earlier.exists() and not dead_writer.exists()
    assert not ancient_live.exists()
    assert ours_live.exists() and live_other.exists()
