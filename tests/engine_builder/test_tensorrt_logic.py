"""The TensorRT path without TensorRT: publish, marker, record, staleness, real-TRT tests.

TensorRT and a GPU cannot exist on these machines, so ``FakeTensorRT`` stands in for exactly
two calls, the plan build and the plan load (it produces and runs an ONNX Runtime model
instead); everything around them (target, flags, cache, lock, publish, verification against
ONNX Runtime, ``.gpu_arch``, the record and its trtexec command) is the real code.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from a2f_engine.base import Engine
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine, session_options
from a2f_engine.targets import GpuInfo, gpu_info, tensorrt_version
from a2f_engine.trt_flags import load_trt_info
from a2f_engine_builder.backends import TensorRTBackend
from a2f_volume.engine_record import check_engine, read_record
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths

from .helpers import REPO, builder_for, make_model

TRT = "tensorrt"
T4 = GpuInfo("Tesla T4", "7.5", "12.6", "12.8")
A10G = GpuInfo("NVIDIA A10G", "8.6", "12.6", "12.8")


class FakeTensorRT(TensorRTBackend):
    """Stands in for TensorRT's build and deserialisation only (no GPU here): the "plan" is
    the ONNX Runtime-optimised model in ONNX format, run by ONNX Runtime."""

    def build(self, onnx: Path, folder: Path, out: Path, timing_cache_dir: Path
              ) -> dict[str, Any]:
        import onnxruntime as ort

        so = session_options(1, optimized_path=str(out))
        ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
        spec = load_trt_info(folder)
        return {"trtexec_command": spec.trtexec_command(
            str(onnx), str(folder / "network.trt"), self.precision,
            str(self.timing_cache_path(timing_cache_dir)))}

    def load(self, engine: Path, folder: Path) -> Engine:
        eng = OnnxRuntimeEngine(engine, max_batch=8, intra_op_threads=1, optimize=False)
        eng.backend = TRT
        return eng


def test_tensorrt_publish_writes_marker_record_and_trtexec_command(
        models_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    folder = make_model(models_root, "mark")
    backend = FakeTensorRT("fp16", gpu=T4, trt_version="10.13.0")
    out = builder_for(models_root, backend=backend).ensure(folder)  # type: ignore[arg-type]
    assert out.result == "built", out.reason
    paths = ModelPaths(folder)
    assert paths.gpu_arch_marker.read_text() == "sm_75\n"
    rec = read_record(paths.engine_record(TRT))
    assert rec.target["gpu_name"] == "Tesla T4" and rec.target["precision"] == "fp16"
    assert rec.target["build"]["memory_pools_bytes"] == {"tacticSharedMem": 49152}
    if rec.serving_graph:  # regression on TensorRT: the composed serving graph was built
        assert rec.trtexec_command.startswith("trtexec --onnx=")
        assert ".serving.onnx " in rec.trtexec_command
    else:
        assert rec.trtexec_command.startswith(f"trtexec --onnx={paths.onnx} ")
    assert "--fp16" in rec.trtexec_command and "--timingCacheFile=" in rec.trtexec_command
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Building TRT from ONNX: mark ") for m in messages)
    assert f"TRT engine created: {folder / 'network.trt'}" in messages
    assert rec.verification["atol"] == 2e-2  # fp16 tolerance


@pytest.mark.parametrize("change", ["gpu", "opt_batch", "precision"])
def test_tensorrt_engine_is_stale_when_any_target_part_changes(
        models_root: Path, change: str) -> None:
    folder = make_model(models_root, "mark")
    base = FakeTensorRT("fp32", gpu=T4, trt_version="10.13.0")
    assert builder_for(models_root, backend=base).ensure(folder).result == "built"  # type: ignore[arg-type]
    paths = ModelPaths(folder)
    if change == "gpu":
        other = FakeTensorRT("fp32", gpu=A10G, trt_version="10.13.0")
    elif change == "precision":
        other = FakeTensorRT("fp16", gpu=T4, trt_version="10.13.0")
    else:
        other = base
        doc = json.loads((folder / "trt_info.json").read_text())
        doc["defaults"]["OPT_BATCH_SIZE"] = 2
        (folder / "trt_info.json").write_text(json.dumps(doc))
    res = check_engine(paths, TRT, other.target(folder), HashCache())
    assert not res.valid and "target changed" in res.reason
    assert builder_for(models_root, backend=other).ensure(folder).result == "built"  # type: ignore[arg-type]
    expected = "sm_86\n" if change == "gpu" else "sm_75\n"
    assert paths.gpu_arch_marker.read_text() == expected


def test_timing_cache_is_per_target(models_root: Path) -> None:
    a = FakeTensorRT("fp32", gpu=T4, trt_version="10.13.0").timing_cache_path(models_root)
    b = FakeTensorRT("fp16", gpu=T4, trt_version="10.13.0").timing_cache_path(models_root)
    c = FakeTensorRT("fp32", gpu=A10G, trt_version="10.13.0").timing_cache_path(models_root)
    assert a == b  # precision and profiles are builder-config, not device: one cache
    assert a != c and a.name.startswith("sm_75-trt10.13.0-")


_TRT_REASON = "needs the TensorRT runtime and an NVIDIA GPU (neither can exist on CI machines)"
needs_trt = pytest.mark.skipif(tensorrt_version()[0] is None or gpu_info()[0] is None,
                               reason=_TRT_REASON)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_real_tensorrt_engine_matches_onnxruntime(models_root: Path) -> None:
    from a2f_engine.loader import load_engine
    from a2f_engine.verify import deterministic_feeds

    folder = make_model(models_root, "mark")
    out = builder_for(models_root, backend=TensorRTBackend("fp32")).ensure(folder)  # type: ignore[arg-type]
    assert out.result == "built", out.reason
    engine = load_engine(ModelPaths(folder), TRT)
    ref = OnnxRuntimeEngine(folder / "network.onnx", optimize=False)
    for batch in (1, 3):
        feeds = deterministic_feeds(ref.inputs, batch, seed=batch)
        got, want = engine.run(feeds), ref.run(feeds)
        np.testing.assert_allclose(got["result"], want["result"], atol=1e-3, rtol=1e-3)
    engine.close()


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_tensorrt_engine_runs_from_several_threads_at_once(models_root: Path) -> None:
    """The scheduler's inference workers call ``run`` concurrently: each run checks an
    execution context out of the pool, and every thread's results match ONNX Runtime."""
    import threading

    from a2f_engine.loader import load_engine
    from a2f_engine.verify import deterministic_feeds

    folder = make_model(models_root, "mark")
    out = builder_for(models_root, backend=TensorRTBackend("fp32")).ensure(folder)  # type: ignore[arg-type]
    assert out.result == "built", out.reason
    engine = load_engine(ModelPaths(folder), TRT, workers=3)
    ref = OnnxRuntimeEngine(folder / "network.onnx", optimize=False)
    feeds = [deterministic_feeds(ref.inputs, 2 + i, seed=i) for i in range(3)]
    want = [ref.run(f)["result"] for f in feeds]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(20):
                got = engine.run(feeds[i])["result"]
                np.testing.assert_allclose(got, want[i], atol=1e-3, rtol=1e-3)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    engine.close()
    assert not errors, errors


@pytest.mark.tensorrt
@needs_trt
def test_deserialising_a_foreign_plan_is_an_error_with_the_reason(tmp_path: Path) -> None:
    from a2f_engine.errors import EngineLoadError
    from a2f_engine.tensorrt_engine import TensorRTEngine

    plan = tmp_path / "network.trt"
    plan.write_bytes(b"not a plan" * 100)
    with pytest.raises(EngineLoadError, match="could not deserialise"):
        TensorRTEngine(plan)


@pytest.mark.slow
def test_tensorrt_code_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    """mypy over the TensorRT modules with the ``tensorrt-stubs`` package.

    The published stubs are not marked as typed (no ``py.typed``), a few signatures use the
    keyword ``in`` as a parameter name, one has a required parameter after defaulted ones,
    and one import names a runtime-only package; no parser accepts that, so mypy reads a
    private copy with exactly those lines repaired.
    """
    pytest.importorskip("tensorrt_stubs", reason="the tensorrt-stubs package is not installed")
    site = Path(sys.modules["tensorrt_stubs"].__file__ or "").parent.parent
    stubs = tmp_path / "stubs"
    for pkg in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / pkg, stubs / pkg,
                        ignore=shutil.ignore_patterns("*.py", "*.so", "__pycache__"))
    for pyi in stubs.rglob("*.pyi"):
        text = re.sub(r"([(,] ?)in: ", r"\1in_: ", pyi.read_text())
        # One generated signature puts a required parameter after defaulted ones.
        text = text.replace("power: Weights = None, channel_axis: int)",
                            "power: Weights = None, channel_axis: int = ...)")
        text = text.replace("import tensorrt_libs as tensorrt_libs\n", "")
        pyi.write_text(text)
    cfg = tmp_path / "mypy.ini"
    cfg.write_text(f"[mypy]\npython_version = 3.11\nmypy_path = {stubs}\n"
                   "disallow_untyped_defs = True\ncheck_untyped_defs = True\n"
                   "explicit_package_bases = True\nfollow_imports = silent\n"
                   "[mypy-onnxruntime.*,cuda.*,a2f_standin.*]\nignore_missing_imports = True\n"
                   "[mypy-tensorrt.*,tensorrt_bindings.*]\nignore_errors = True\n")
    files = [REPO / "lib/a2f_engine/build_trt.py", REPO / "lib/a2f_engine/tensorrt_engine.py",
             REPO / "lib/a2f_engine/targets.py"]
    res = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(cfg),
                          "--cache-dir", str(tmp_path / "cache"), *map(str, files)],
                         capture_output=True, text=True, timeout=300, cwd=REPO / "lib",
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
