"""--once on a real volume with the real ONNX Runtime backend: build, skip, rebuild rules."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from a2f_engine.loader import load_engine
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_engine.serving_plan import info_from_record
from a2f_engine.serving_verify import verify_serving_graph
from a2f_engine.targets import Target, onnxruntime_target
from a2f_engine.verify import deterministic_feeds
from a2f_engine_builder.backends import OnnxRuntimeBackend
from a2f_engine_builder.cli import main
from a2f_volume.engine_record import check_engine, read_record, valid_engine
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths, cached_engine_path
from a2f_volume.model_folder import load_model_folder

from .helpers import builder_for, make_model, rewrite_onnx_same_size

ORT = "onnxruntime"


def _once(root: Path, *args: str) -> int:
    return main(["--models-root", str(root), "--once", "--metrics-port", "-1",
                 "--ort-threads", "1", *args])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k in ("SKIP_TRT_BUILD", "FORCE_TRT_REBUILD") or k.startswith("A2F_ENGINE_BUILDER_"):
            monkeypatch.delenv(k)


def _builds(caplog: pytest.LogCaptureFixture, model: str) -> int:
    return sum(1 for r in caplog.records
               if r.getMessage().startswith(f"Building ORT from ONNX: {model} "))


def test_missing_engine_is_built_verified_and_matches_onnx(
        models_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    make_model(models_root, "mark")
    make_model(models_root, "multi", "diffusion")
    assert _once(models_root) == 0
    for name in ("mark", "multi"):
        paths = ModelPaths(models_root / name)
        rec = valid_engine(paths, ORT, onnxruntime_target())
        assert rec is not None and rec.model == name
        assert rec.verification["max_abs_error"] <= 1e-4
        assert any(r.getMessage() == f"ORT engine created: {paths.engine(ORT)}"
                   for r in caplog.records)
        engine = load_engine(paths, ORT)
        serving = info_from_record(rec.serving_graph)
        if serving is not None:  # diffusion: the serving graph, checked against the network
            assert verify_serving_graph(engine, load_model_folder(paths.folder), serving,
                                        seed=42).worst_ratio <= 1.0
            continue
        ref = OnnxRuntimeEngine(paths.onnx, optimize=False)
        feeds = deterministic_feeds(ref.inputs, 3, seed=42)
        got, want = engine.run(feeds), ref.run(feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_restart_with_valid_engines_rebuilds_nothing_and_says_why(
        models_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    make_model(models_root, "mark")
    assert _once(models_root) == 0
    engine = ModelPaths(models_root / "mark").engine(ORT)
    before = engine.stat()
    caplog.clear()
    assert _once(models_root) == 0
    assert _builds(caplog, "mark") == 0
    assert any("mark: engine up to date, nothing to build" in r.getMessage()
               for r in caplog.records)
    after = engine.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_onnx_with_same_size_and_older_mtime_is_rebuilt(
        models_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    folder = make_model(models_root, "mark")
    assert _once(models_root) == 0
    old = read_record(ModelPaths(folder).engine_record(ORT))
    rewrite_onnx_same_size(folder / "network.onnx")
    caplog.clear()
    assert _once(models_root) == 0
    assert _builds(caplog, "mark") == 1
    assert any("ONNX bytes changed" in r.getMessage() for r in caplog.records)
    new = valid_engine(ModelPaths(folder), ORT, onnxruntime_target())
    assert new is not None and new.onnx_sha256 != old.onnx_sha256
    assert new.onnx_size == old.onnx_size


def test_different_recorded_runtime_version_is_rebuilt(
        models_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    folder = make_model(models_root, "mark")
    assert _once(models_root) == 0
    paths = ModelPaths(folder)
    target = onnxruntime_target()
    rec = read_record(paths.engine_record(ORT))
    cached = cached_engine_path(models_root, rec.onnx_sha256, target.fingerprint, ORT)
    # Pretend both the folder's and the cache's engine were built by another ORT version.
    stale = Target(ORT, {**target.fields, "onnxruntime_version": "1.17.0"})
    for rec_path in (paths.engine_record(ORT), cached.with_name(cached.name + ".json")):
        doc = json.loads(rec_path.read_text())
        doc["target"] = stale.to_json()
        doc["target_fingerprint"] = stale.fingerprint
        rec_path.write_text(json.dumps(doc))
    assert "target changed" in check_engine(paths, ORT, target).reason
    caplog.clear()
    assert _once(models_root) == 0
    assert _builds(caplog, "mark") == 1
    assert valid_engine(paths, ORT, target) is not None


def test_runtime_upgrade_changes_the_target_and_rebuilds(models_root: Path) -> None:
    folder = make_model(models_root, "mark")
    registry = CollectorRegistry()
    assert builder_for(models_root, registry).ensure(folder).result == "built"

    class UpgradedOrt(OnnxRuntimeBackend):
        def target(self, folder: Path) -> Target:
            t = super().target(folder)
            return Target(t.backend, {**t.fields, "onnxruntime_version": "99.0.0"})

    upgraded = builder_for(models_root, backend=UpgradedOrt(threads=1))
    out = upgraded.ensure(folder)
    assert out.result == "built", out.reason
    rec = read_record(ModelPaths(folder).engine_record(ORT))
    assert rec.target["onnxruntime_version"] == "99.0.0"
    assert registry.get_sample_value("a2f_engine_builder_builds_total",
                                     {"model": "mark", "result": "built"}) == 1


def test_force_rebuild_env_rebuilds_valid_engines(
        models_root: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    make_model(models_root, "mark")
    assert _once(models_root) == 0
    caplog.clear()
    monkeypatch.setenv("FORCE_TRT_REBUILD", "1")
    assert _once(models_root) == 0
    assert _builds(caplog, "mark") == 1
    monkeypatch.setenv("FORCE_TRT_REBUILD", "false")
    caplog.clear()
    assert _once(models_root) == 0
    assert _builds(caplog, "mark") == 0


def test_skip_build_env_builds_nothing(
        models_root: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    folder = make_model(models_root, "mark")
    monkeypatch.setenv("SKIP_TRT_BUILD", "true")
    assert _once(models_root) == 0
    assert not ModelPaths(folder).engine(ORT).exists()
    assert any("SKIP_TRT_BUILD is set, not building" in r.getMessage() for r in caplog.records)


def test_corrupt_onnx_fails_loudly_and_leaves_others_and_old_engine(
        models_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bad = make_model(models_root, "bad")
    assert _once(models_root) == 0
    paths = ModelPaths(bad)
    old_engine = paths.engine(ORT).read_bytes()
    old_record = paths.engine_record(ORT).read_bytes()
    data = (bad / "network.onnx").read_bytes()
    (bad / "network.onnx").write_bytes(data[: len(data) // 3])  # truncated
    make_model(models_root, "good", seed=3)
    caplog.clear()
    assert _once(models_root) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("model bad" in m and str(bad / "network.onnx") in m for m in errors), errors
    assert paths.engine(ORT).read_bytes() == old_engine
    assert paths.engine_record(ORT).read_bytes() == old_record
    assert valid_engine(ModelPaths(models_root / "good"), ORT, onnxruntime_target()) is not None
    leftovers = [p.name for p in [*bad.iterdir(), *(models_root / ".a2f/engines").iterdir()]
                 if "a2f-tmp" in p.name]
    assert leftovers == []


def test_missing_onnx_logs_the_seeds_line(
        models_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    folder = make_model(models_root, "mark")
    (folder / "network.onnx").unlink()
    assert _once(models_root) == 1
    assert any(f"ONNX not found: {folder / 'network.onnx'}" in r.getMessage()
               for r in caplog.records)


def test_failure_metric_counts_per_model(models_root: Path) -> None:
    folder = make_model(models_root, "mark")
    (folder / "network.onnx").write_bytes(b"not an onnx model")
    registry = CollectorRegistry()
    out = builder_for(models_root, registry).ensure(folder)
    assert out.result == "failed" and "ONNX Runtime rejected the model" in out.reason
    assert registry.get_sample_value("a2f_engine_builder_builds_total",
                                     {"model": "mark", "result": "failed"}) == 1
    assert registry.get_sample_value("a2f_engine_builder_builds_total",
                                     {"model": "mark", "result": "built"}) == 0


def test_version_symlink_engine_lands_in_the_resolved_version_and_is_reused(
        models_root: Path) -> None:
    versions = models_root / ".a2f" / "versions" / "mark"
    va = make_model(versions, "va")
    (models_root / "mark").symlink_to(va, target_is_directory=True)
    registry = CollectorRegistry()
    builder = builder_for(models_root, registry)
    assert builder.ensure(models_root / "mark").result == "built"
    assert (va / "network.ort").is_file()
    # Version B: identical ONNX bytes, other files may differ -> the cached engine is reused.
    vb = make_model(versions, "vb")
    tmp_link = models_root / ".mark.swap"
    tmp_link.symlink_to(vb, target_is_directory=True)
    os.replace(tmp_link, models_root / "mark")
    out = builder.ensure(models_root / "mark")
    assert out.result == "reused", out.reason
    assert (vb / "network.ort").stat().st_ino == (va / "network.ort").stat().st_ino
    assert valid_engine(ModelPaths(models_root / "mark"), ORT, onnxruntime_target(),
                        HashCache()) is not None
    # Version C: other ONNX bytes -> a new engine in C, A's engine untouched.
    vc = make_model(versions, "vc", seed=7)
    a_bytes = (va / "network.ort").read_bytes()
    tmp_link.symlink_to(vc, target_is_directory=True)
    os.replace(tmp_link, models_root / "mark")
    assert builder.ensure(models_root / "mark").result == "built"
    assert (va / "network.ort").read_bytes() == a_bytes
    assert read_record(vc / "network.ort.json").onnx_sha256 != read_record(
        va / "network.ort.json").onnx_sha256


def test_bad_flag_value_is_a_usage_error(models_root: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--models-root", str(models_root), "--poll-interval-s", "0"])
    assert exc.value.code == 2
    assert "poll_interval_s must be > 0" in capsys.readouterr().err


def test_engine_that_fails_verification_is_not_published(models_root: Path) -> None:
    folder = make_model(models_root, "mark")
    other = make_model(models_root.parent / "elsewhere", "other", seed=4)

    class WrongWeights(OnnxRuntimeBackend):
        """A build that silently produced an engine of other weights (a real ORT model)."""

        def build(self, onnx: Path, folder: Path, out: Path, timing_cache_dir: Path
                  ) -> dict[str, object]:
            return super().build(other / "network.onnx", folder, out, timing_cache_dir)

    registry = CollectorRegistry()
    out = builder_for(models_root, registry, WrongWeights(threads=1)).ensure(folder)
    assert out.result == "failed"
    assert "differs from ONNX Runtime beyond fp32 tolerance" in out.reason
    assert not ModelPaths(folder).engine(ORT).exists()
    assert list((models_root / ".a2f" / "engines").iterdir()) == []
    assert registry.get_sample_value("a2f_engine_builder_builds_total",
                                     {"model": "mark", "result": "failed"}) == 1
