"""Target fingerprints: every field counts; backend choice says why."""

from __future__ import annotations

import pytest

from a2f_engine.targets import (
    GpuInfo,
    Target,
    check_tensorrt_version,
    choose_backend,
    cpu_features,
    effective_precision,
    gpu_info,
    onnxruntime_target,
    tensorrt_target,
    tensorrt_version,
)

# A GPU cannot exist here: GpuInfo values are what CUDA would report on a T4 / A10G.
T4 = GpuInfo("Tesla T4", "7.5", "12.6", "12.8")
A10G = GpuInfo("NVIDIA A10G", "8.6", "12.6", "12.8")
BUILD = {"profiles": {"input": [[1, 1, 8320], [10, 1, 8320], [128, 1, 8320]]}}


def test_fingerprint_is_stable_and_order_independent() -> None:
    a = Target("onnxruntime", {"x": 1, "y": [1, 2]})
    b = Target("onnxruntime", {"y": [1, 2], "x": 1})
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert onnxruntime_target().fingerprint == onnxruntime_target().fingerprint


@pytest.mark.parametrize("change", [
    {"gpu": A10G},
    {"gpu": GpuInfo("NVIDIA T4G", "7.5", "12.6", "12.8")},  # same capability, other model
    {"trt": "10.14.1"},
    {"precision": "fp16"},
    {"build": {"profiles": {"input": [[1, 1, 8320], [4, 1, 8320], [128, 1, 8320]]}}},
])
def test_tensorrt_fingerprint_changes_with_each_part(change: dict[str, object]) -> None:
    base = dict(gpu=T4, trt="10.13.0", precision="fp32", build=BUILD)
    other = {**base, **change}
    fp = tensorrt_target(base["gpu"], base["trt"], base["precision"],  # type: ignore[arg-type]
                         base["build"]).fingerprint  # type: ignore[arg-type]
    fp2 = tensorrt_target(other["gpu"], other["trt"], other["precision"],  # type: ignore[arg-type]
                          other["build"]).fingerprint  # type: ignore[arg-type]
    assert fp != fp2


@pytest.mark.parametrize("gpu", [
    GpuInfo("Tesla T4", "7.5", "12.8", "12.8"),  # cuda-python's own runtime version
    GpuInfo("Tesla T4", "7.5", "12.6", "13.0"),  # a newer driver
])
def test_cuda_versions_do_not_decide_engine_validity(gpu: GpuInfo) -> None:
    assert tensorrt_target(gpu, "10.13.0", "fp32", BUILD).fingerprint == \
        tensorrt_target(T4, "10.13.0", "fp32", BUILD).fingerprint


def test_hardware_compatibility_level_decides_which_gpu_fields_count() -> None:
    same_cc = {**BUILD, "hardware_compatibility_level": "sameComputeCapability"}
    t4g = GpuInfo("NVIDIA T4G", "7.5", "12.6", "12.8")
    assert tensorrt_target(T4, "10.13.0", "fp32", same_cc).fingerprint == \
        tensorrt_target(t4g, "10.13.0", "fp32", same_cc).fingerprint
    assert tensorrt_target(T4, "10.13.0", "fp32", same_cc).fingerprint != \
        tensorrt_target(A10G, "10.13.0", "fp32", same_cc).fingerprint
    ampere = {**BUILD, "hardware_compatibility_level": "ampere+"}
    l4 = GpuInfo("NVIDIA L4", "8.9", "12.6", "12.8")
    assert tensorrt_target(A10G, "10.13.0", "fp32", ampere).fingerprint == \
        tensorrt_target(l4, "10.13.0", "fp32", ampere).fingerprint
    with pytest.raises(RuntimeError, match=r"ampere\+ needs compute capability 8\.0"):
        tensorrt_target(T4, "10.13.0", "fp32", ampere)


def test_fp16_in_trt_info_makes_the_effective_precision_fp16() -> None:
    t = tensorrt_target(T4, "10.13.0", "fp32", {**BUILD, "fp16": True})
    assert t.fields["precision"] == "fp16"
    assert effective_precision("fp16", BUILD) == "fp16"
    assert effective_precision("fp32", BUILD) == "fp32"


@pytest.mark.parametrize(("version", "ok"), [("10.13.0.35", True), ("10.14.1", True),
                                             ("11.0.0.1", True), ("10.4.0", False),
                                             ("10.9.0.34", False)])
def test_tensorrt_minimum_version(version: str, ok: bool) -> None:
    if ok:
        check_tensorrt_version(version)
    else:
        with pytest.raises(RuntimeError, match=r"too old: the A2F-3D models need TensorRT 10\.13"):
            check_tensorrt_version(version)


def test_onnxruntime_target_records_version_and_cpu_features() -> None:
    import onnxruntime

    t = onnxruntime_target()
    assert t.fields["onnxruntime_version"] == onnxruntime.__version__
    assert t.fields["execution_provider"] == "CPUExecutionProvider"
    changed = Target(t.backend, {**t.fields, "cpu_features": ["sse4_2"]})
    assert changed.fingerprint != t.fingerprint


def test_cpu_features_keeps_only_relevant_flags() -> None:
    info = "processor\t: 0\nflags\t\t: fpu vme avx2 fma sse4_2 avx512f lm\n"
    assert cpu_features(info) == ["avx2", "avx512f", "fma", "sse4_2"]
    assert cpu_features("Features\t: fp asimd asimddp sve\n") == ["asimd", "asimddp", "sve"]


def test_gpu_marker_is_the_seeds_sm_spelling() -> None:
    assert T4.sm == "sm_75" and A10G.sm == "sm_86"


_TRT_USABLE = tensorrt_version()[0] is not None and gpu_info()[0] is not None


@pytest.mark.skipif(_TRT_USABLE, reason="TensorRT and a GPU are usable on this machine")
def test_auto_picks_onnxruntime_here_and_says_why() -> None:
    backend, why = choose_backend("auto")
    assert backend == "onnxruntime"
    assert "TensorRT not usable" in why


@pytest.mark.skipif(_TRT_USABLE, reason="TensorRT and a GPU are usable on this machine")
def test_explicit_tensorrt_without_runtime_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="tensorrt requested but unusable"):
        choose_backend("tensorrt")
    with pytest.raises(ValueError, match="expected auto, tensorrt or onnxruntime"):
        choose_backend("cuda")
