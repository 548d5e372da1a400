"""The TensorRT code paths against FAKE TensorRT and FAKE cuda-python modules.

TensorRT and a GPU cannot exist on CI machines; ``fake_tensorrt`` implements the calls our
code makes (same names and return conventions) and records them. Everything else is real:
``build_trt_plan``, ``TensorRTEngine``, the engine-builder's build/verify/publish, the
validity rule the inference server applies, and ONNX Runtime computing the fake plans'
outputs from the bytes in the fake device memory.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from a2f_engine import targets
from a2f_engine.build_trt import build_trt_plan
from a2f_engine.errors import EngineBuildError, EngineBusyError, EngineClosedError, EngineLoadError
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_engine.targets import GpuInfo, current_target
from a2f_engine.tensorrt_engine import TensorRTEngine
from a2f_engine.trt_flags import load_trt_info, parse_trt_info
from a2f_engine_builder.backends import TensorRTBackend
from a2f_volume.engine_record import check_engine, read_record
from a2f_volume.layout import ModelPaths

from . import fake_tensorrt
from .fake_tensorrt import FakeGPU
from .helpers import builder_for, make_model

T4 = GpuInfo("Tesla T4", "7.5", "12.9", "13.0")
TRT = "tensorrt"


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeGPU:
    """FAKE TensorRT 10.13 + FAKE cuda-python in sys.modules (no GPU can exist here)."""
    return fake_tensorrt.install(monkeypatch, "10.13.3.9")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def noise_onnx(path: Path) -> Path:
    """y = 2 * x + noise; x is [B, 4] (dynamic batch), noise a static [1, 4] input."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["x2"]),
         helper.make_node("Add", ["x2", "noise"], ["y"])], "noise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]),
         helper.make_tensor_value_info("noise", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def noise_plan(tmp_path: Path, max_batch: int = 16, **kw: object) -> Path:
    onnx_path = noise_onnx(tmp_path / "noise.onnx")
    return fake_tensorrt.write_plan(
        tmp_path / "noise.trt", onnx_path,
        [{"name": "x", "shape": [-1, 4]}, {"name": "noise", "shape": [1, 4]}],
        [{"name": "y", "shape": [-1, 4]}],
        {"x": [[1, 4], [4, 4], [max_batch, 4]]}, **kw)  # type: ignore[arg-type]


def assert_all_freed(gpu: FakeGPU) -> None:
    cuda, trt = gpu.cudart.ledger, gpu.trt.ledger
    assert not cuda.device and not cuda.pinned and not cuda.streams, "CUDA memory left"
    assert cuda.mallocs == cuda.frees and cuda.host_allocs == cuda.host_frees
    assert trt.contexts_alive == 0 and trt.engines_alive == 0 and trt.runtimes_alive == 0
    assert not cuda.bad_calls and not trt.use_after_free


# -- 1: version-compatible plans ----------------------------------------------------------
def test_version_compatible_plan_needs_and_gets_host_code_allowed(
        fake_trt: FakeGPU, tmp_path: Path) -> None:
    plan = noise_plan(tmp_path, version_compatible=True)
    with pytest.raises(EngineLoadError, match="versionCompatible"):
        TensorRTEngine(plan)
    assert not fake_trt.trt.ledger.runtimes[-1].host_code_allowed
    engine = TensorRTEngine(plan, version_compatible=True)
    assert fake_trt.trt.ledger.runtimes[-1].host_code_allowed
    engine.close()


def test_builder_publishes_a_version_compatible_engine(
        fake_trt: FakeGPU, models_root: Path) -> None:
    folder = make_model(models_root, "mark")
    doc = json.loads((folder / "trt_info.json").read_text())
    doc["trt_build_param"]["compat"] = ["--versionCompatible"]
    (folder / "trt_info.json").write_text(json.dumps(doc))
    backend = TensorRTBackend("fp32", gpu=T4, trt_version="10.13.3.9")
    out = builder_for(models_root, backend=backend).ensure(folder)  # type: ignore[arg-type]
    assert out.result == "built", out.reason
    assert "VERSION_COMPATIBLE" in fake_trt.trt.ledger.set_flags
    assert fake_trt.trt.ledger.runtimes[-1].host_code_allowed


# -- 2/3: precision agreement -------------------------------------------------------------
@pytest.mark.parametrize("how", ["--precision fp16", "--fp16 in trt_info"])
def test_fp16_engine_is_built_verified_recorded_and_served_as_fp16(
        fake_trt: FakeGPU, models_root: Path, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    folder = make_model(models_root, "mark")
    requested = "fp16"
    if how == "--fp16 in trt_info":
        requested = "fp32"
        doc = json.loads((folder / "trt_info.json").read_text())
        doc["trt_build_param"]["precision"] = ["--fp16"]
        (folder / "trt_info.json").write_text(json.dumps(doc))
    backend = TensorRTBackend(requested, gpu=T4, trt_version="10.13.3.9")
    out = builder_for(models_root, backend=backend).ensure(folder)  # type: ignore[arg-type]
    assert out.result == "built", out.reason
    assert fake_trt.trt.ledger.set_flags.count("FP16") == 1
    paths = ModelPaths(folder)
    rec = read_record(paths.engine_record(TRT))
    assert rec.target["precision"] == "fp16"
    assert rec.verification["atol"] == 2e-2  # verified with the fp16 tolerance
    # The inference server computes its target without a precision of its own.
    monkeypatch.setattr(targets, "gpu_info", lambda: (T4, ""))
    monkeypatch.setattr(targets, "tensorrt_version", lambda: ("10.13.3.9", ""))
    check = check_engine(paths, TRT, current_target(folder, TRT))
    assert check.valid, check.reason
    # An explicit fp32 target mismatches, unless trt_info.json makes fp32 mean fp16.
    explicit = check_engine(paths, TRT, current_target(folder, TRT, "fp32"))
    assert explicit.valid == (how == "--fp16 in trt_info")


def test_fp32_engine_is_served_and_a_lying_record_is_not(
        fake_trt: FakeGPU, models_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_model(models_root, "mark")
    backend = TensorRTBackend("fp32", gpu=T4, trt_version="10.13.3.9")
    assert builder_for(models_root, backend=backend).ensure(folder).result == "built"  # type: ignore[arg-type]
    assert "FP16" not in fake_trt.trt.ledger.set_flags
    monkeypatch.setattr(targets, "gpu_info", lambda: (T4, ""))
    monkeypatch.setattr(targets, "tensorrt_version", lambda: ("10.13.3.9", ""))
    paths = ModelPaths(folder)
    assert check_engine(paths, TRT, current_target(folder, TRT)).valid
    # trt_info now asks for --fp16: the fp32 engine is no longer valid anywhere.
    doc = json.loads((folder / "trt_info.json").read_text())
    doc["trt_build_param"]["precision"] = ["--fp16"]
    (folder / "trt_info.json").write_text(json.dumps(doc))
    res = check_engine(paths, TRT, current_target(folder, TRT))
    assert not res.valid and "target changed" in res.reason


# -- 5/6: close, stop, leaks --------------------------------------------------------------
def test_close_frees_everything_it_created(fake_trt: FakeGPU, tmp_path: Path) -> None:
    engine = TensorRTEngine(noise_plan(tmp_path), max_batch=4, workers=2)
    engine.set_resident_input("noise", np.ones((1, 4), np.float32))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(engine.run({"x": x})["y"], 2 * x + 1)
    assert fake_trt.trt.ledger.contexts_alive == 2
    engine.close()
    assert_all_freed(fake_trt)
    with pytest.raises(EngineClosedError, match="closed"):
        engine.run({"x": x})
    engine.close()  # twice is harmless


def test_close_never_frees_what_a_running_context_uses(
        fake_trt: FakeGPU, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = TensorRTEngine(noise_plan(tmp_path), max_batch=4, workers=2,
                            close_timeout_s=0.05)
    engine.set_resident_input("noise", np.zeros((1, 4), np.float32))
    gate = threading.Event()
    fake_trt.trt.ledger.gate = gate
    result: dict[str, np.ndarray] = {}
    worker = threading.Thread(target=lambda: result.update(
        engine.run({"x": np.ones((3, 4), np.float32)})))
    worker.start()
    wait_for(lambda: fake_trt.trt.ledger.inside_execute == 1, "the run to enter execute")
    engine.close()  # the worker is still inside execute after the bound
    assert "still running" in caplog.text
    ledger = fake_trt.cudart.ledger
    assert ledger.device and fake_trt.trt.ledger.engines_alive == 1  # kept for the runner
    assert fake_trt.trt.ledger.contexts_alive == 1  # the idle one was freed
    gate.set()
    worker.join(30)
    assert not worker.is_alive()
    np.testing.assert_allclose(result["y"], 2 * np.ones((3, 4)))
    assert_all_freed(fake_trt)  # the last check-in freed the rest


def test_a_run_waiting_for_a_context_gets_a_clear_error_after_close(
        fake_trt: FakeGPU, tmp_path: Path) -> None:
    engine = TensorRTEngine(noise_plan(tmp_path), workers=1, close_timeout_s=30)
    engine.set_resident_input("noise", np.zeros((1, 4), np.float32))
    gate = threading.Event()
    fake_trt.trt.ledger.gate = gate
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.run({"x": np.ones((1, 4), np.float32)})
        except BaseException as err:
            errors.append(err)

    first, second = threading.Thread(target=run), threading.Thread(target=run)
    first.start()
    wait_for(lambda: fake_trt.trt.ledger.inside_execute == 1, "the first run")
    second.start()
    closer = threading.Thread(target=engine.close)
    closer.start()
    wait_for(lambda: len(errors) == 1, "the waiting run to fail")
    assert isinstance(errors[0], EngineClosedError)
    gate.set()
    for t in (first, second, closer):
        t.join(30)
    assert_all_freed(fake_trt)


# -- 7: pool and buffer sizes -------------------------------------------------------------
def test_buffers_are_sized_for_the_schedulers_batch(fake_trt: FakeGPU, tmp_path: Path) -> None:
    plan = noise_plan(tmp_path, max_batch=128)
    engine = TensorRTEngine(plan, max_batch=8, workers=1)
    assert engine.max_batch == 8
    small = fake_trt.cudart.ledger.live_device_bytes()
    engine.close()
    engine = TensorRTEngine(plan, workers=1)  # no batch given: the profile maximum
    assert engine.max_batch == 128
    big = fake_trt.cudart.ledger.live_device_bytes()
    engine.close()
    # x and y are [batch, 4] float32, noise [1, 4]: 2 * batch * 16 + 16 bytes.
    assert (small, big) == (2 * 8 * 16 + 16, 2 * 128 * 16 + 16)
    with pytest.raises(ValueError, match="exceeds max batch 8"):
        TensorRTEngine(plan, max_batch=8).run({"x": np.ones((9, 4), np.float32),
                                                "noise": np.ones((1, 4), np.float32)})


def test_pool_is_bounded_and_reused(fake_trt: FakeGPU, tmp_path: Path) -> None:
    engine = TensorRTEngine(noise_plan(tmp_path), workers=2, checkout_timeout_s=0.05)
    engine.set_resident_input("noise", np.zeros((1, 4), np.float32))
    for _ in range(5):
        engine.run({"x": np.ones((2, 4), np.float32)})
    assert fake_trt.trt.ledger.contexts_made == 2  # no context per call or per thread
    gate = threading.Event()
    fake_trt.trt.ledger.gate = gate
    workers = [threading.Thread(target=engine.run, args=({"x": np.ones((1, 4), np.float32)},))
               for _ in range(2)]
    for w in workers:
        w.start()
    wait_for(lambda: fake_trt.trt.ledger.inside_execute == 2, "both contexts busy")
    with pytest.raises(EngineBusyError, match="all 2 execution contexts"):
        engine.run({"x": np.ones((1, 4), np.float32)})
    gate.set()
    for w in workers:
        w.join(30)
    assert fake_trt.trt.ledger.contexts_made == 2
    engine.close()
    assert_all_freed(fake_trt)


def test_pool_grows_on_demand_to_the_threads_that_run(fake_trt: FakeGPU, tmp_path: Path
                                                       ) -> None:
    engine = TensorRTEngine(noise_plan(tmp_path))  # workers unknown: grows, bounded
    engine.set_resident_input("noise", np.zeros((1, 4), np.float32))
    gate = threading.Event()
    fake_trt.trt.ledger.gate = gate
    threads = [threading.Thread(target=engine.run, args=({"x": np.ones((1, 4), np.float32)},))
               for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: fake_trt.trt.ledger.inside_execute == 3, "three runs side by side")
    gate.set()
    for t in threads:
        t.join(30)
    assert engine.contexts == 3
    engine.close()
    assert_all_freed(fake_trt)


# -- 9: pinned staging, checked return values ---------------------------------------------
def test_every_copy_goes_through_pinned_memory(fake_trt: FakeGPU, tmp_path: Path) -> None:
    engine = TensorRTEngine(noise_plan(tmp_path), workers=1)
    engine.set_resident_input("noise", np.full((1, 4), 0.5, np.float32))
    for b in (1, 3, 2):
        x = np.random.default_rng(b).random((b, 4), dtype=np.float32)
        np.testing.assert_allclose(engine.run({"x": x})["y"], 2 * x + 0.5, rtol=1e-6)
    copies = fake_trt.cudart.ledger.copies
    assert copies and all(pinned for _, pinned in copies)
    assert len(copies) == 6  # x up, y down per run; the resident noise never per run
    engine.close()


def test_a_rejected_optimisation_profile_is_a_build_error(
        fake_trt: FakeGPU, tmp_path: Path) -> None:
    folder = make_model(tmp_path, "mark")
    fake_trt.trt.ledger.profile_index = -1
    with pytest.raises(EngineBuildError, match="optimisation profile"):
        build_trt_plan(folder / "network.onnx", load_trt_info(folder), "fp32")


# -- resident inputs ----------------------------------------------------------------------
def test_resident_input_is_uploaded_once_and_shared_by_every_context(
        fake_trt: FakeGPU, tmp_path: Path) -> None:
    engine = TensorRTEngine(noise_plan(tmp_path), workers=2)
    noise = np.arange(4, dtype=np.float32).reshape(1, 4)
    engine.set_resident_input("noise", noise)
    assert fake_trt.cudart.ledger.sync_uploads == 1
    gate = threading.Event()
    fake_trt.trt.ledger.gate = gate
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(
        engine.run({"x": np.ones((2, 4), np.float32)})["y"])) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: fake_trt.trt.ledger.inside_execute == 2, "both contexts running")
    gate.set()
    for t in threads:
        t.join(30)
    noise_ptrs = {ptr for name, ptr in fake_trt.trt.ledger.addresses if name == "noise"}
    assert len(noise_ptrs) == 3  # two per-context buffers at creation, then ONE shared
    for y in results:
        np.testing.assert_allclose(y, 2 + noise.repeat(2, axis=0))
    assert fake_trt.cudart.ledger.sync_uploads == 1
    with pytest.raises(ValueError, match="resident"):
        engine.run({"x": np.ones((1, 4), np.float32), "noise": noise})
    with pytest.raises(ValueError, match="shape"):
        engine.set_resident_input("noise", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="not an input"):
        engine.set_resident_input("nope", noise)
    engine.close()
    assert_all_freed(fake_trt)


def test_resident_input_with_onnxruntime(tmp_path: Path) -> None:
    engine = OnnxRuntimeEngine(noise_onnx(tmp_path / "noise.onnx"), intra_op_threads=1)
    noise = np.arange(4, dtype=np.float32).reshape(1, 4)
    engine.set_resident_input("noise", noise)
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(engine.run({"x": x})["y"], 2 * x + noise, rtol=1e-6)
    with pytest.raises(ValueError, match="resident"):
        engine.run({"x": x, "noise": noise})
    with pytest.raises(ValueError, match=r"shape \(1, 5\)"):
        engine.set_resident_input("noise", np.zeros((1, 5), np.float32))
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.run({"x": x})


# -- 8/11: unavailable features, TensorRT 11 ----------------------------------------------
def _spec(*flags: str) -> object:
    return parse_trt_info({"trt_build_param": {"g": [
        "--minShapes=input:1x1x8320,emotion:1x1x26", "--maxShapes=input:4x1x8320,emotion:4x1x26",
        *flags]}, "defaults": {}})


def test_same_compute_capability_on_old_tensorrt_names_flag_and_version(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpu = fake_tensorrt.install(monkeypatch, "10.4.0.26")
    folder = make_model(tmp_path, "mark")
    with pytest.raises(EngineBuildError) as exc:
        build_trt_plan(folder / "network.onnx",
                       _spec("--hardwareCompatibilityLevel=sameComputeCapability"),  # type: ignore[arg-type]
                       "fp32")
    msg = str(exc.value)
    assert "SAME_COMPUTE_CAPABILITY" in msg and "TensorRT 10.9" in msg and "10.4.0.26" in msg
    assert not gpu.trt.ledger.network_flags  # refused before any build work


def test_tensorrt_11_builds_fp32_strongly_typed_and_refuses_fp16(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpu = fake_tensorrt.install(monkeypatch, "11.0.0.1")
    folder = make_model(tmp_path, "mark")
    spec = load_trt_info(folder)
    plan = build_trt_plan(folder / "network.onnx", spec, "fp32")
    assert json.loads(plan)["precision"] == "fp32"
    assert gpu.trt.ledger.network_flags == [1 << 1]  # STRONGLY_TYPED
    with pytest.raises(EngineBuildError) as exc:
        build_trt_plan(folder / "network.onnx", spec, "fp16")
    assert "BuilderFlag.FP16" in str(exc.value) and "TensorRT 11" in str(exc.value)


def test_tensorrt_10_uses_the_fp16_flag_and_a_weakly_typed_network(
        fake_trt: FakeGPU, tmp_path: Path) -> None:
    folder = make_model(tmp_path, "mark")
    build_trt_plan(folder / "network.onnx", load_trt_info(folder), "fp16")
    assert fake_trt.trt.ledger.network_flags == [0]
    assert fake_trt.trt.ledger.set_flags == ["FP16"]
