"""trt_info.json -> TensorRT build settings, as trtexec reads the same flags (no TensorRT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from a2f_engine.trt_flags import load_trt_info, parse_shapes, parse_size_bytes, parse_trt_info
from a2f_volume.errors import ModelFolderError

from .helpers import make_model


def test_regression_standin_gives_profile_and_pool_from_defaults(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "mark")
    doc = json.loads((folder / "trt_info.json").read_text())
    mx, opt = doc["defaults"]["MAX_BATCH_SIZE"], doc["defaults"]["OPT_BATCH_SIZE"]
    spec = load_trt_info(folder)
    assert spec.profiles["input"] == ((1, 1, 8320), (opt, 1, 8320), (mx, 1, 8320))
    assert spec.profiles["emotion"] == ((1, 1, 26), (opt, 1, 26), (mx, 1, 26))
    # trtexec: sizes without suffix are MiB; 0.046875 MiB = 48 KiB.
    assert spec.memory_pools_bytes == {"tacticSharedMem": 48 * 1024}
    assert (spec.max_batch, spec.opt_batch) == (mx, opt)
    assert not spec.fp16


def test_diffusion_batch_axis_two_for_latents(tmp_path: Path) -> None:
    spec = load_trt_info(make_model(tmp_path, "multi", "diffusion"))
    lo, mid, hi = spec.profiles["input_latents"]
    assert lo[2] == 1 and mid[2] == spec.opt_batch and hi[2] == spec.max_batch
    assert lo[:2] == hi[:2] == (2, 2)


def test_trtexec_command_repeats_the_flags_and_adds_fp16(tmp_path: Path) -> None:
    spec = load_trt_info(make_model(tmp_path, "mark"))
    cmd = spec.trtexec_command("/m/network.onnx", "/m/network.trt", "fp16", "/c/t.cache")
    assert cmd.startswith("trtexec --onnx=/m/network.onnx --saveEngine=/m/network.trt")
    assert "--memPoolSize=tacticSharedMem:0.046875" in cmd
    assert f"--maxShapes=input:{spec.max_batch}x1x8320" in cmd
    assert "--fp16" in cmd and "--timingCacheFile=/c/t.cache" in cmd
    assert "--fp16" not in spec.trtexec_command("a", "b", "fp32")


@pytest.mark.parametrize(("text", "expected"), [
    ("0.046875", 49152), ("1", 1 << 20), ("512B", 512), ("48K", 49152), ("2G", 2 << 30),
])
def test_pool_sizes_follow_trtexec_units(text: str, expected: int) -> None:
    assert parse_size_bytes(text) == expected


def test_shapes_accept_quoted_names() -> None:
    assert parse_shapes("'input':1x2x3,emotion:4x5") == {"input": (1, 2, 3), "emotion": (4, 5)}


def _doc(*args: str, defaults: dict[str, int] | None = None) -> dict[str, object]:
    return {"trt_build_param": {"g": list(args)},
            "defaults": defaults if defaults is not None else
            {"MAX_BATCH_SIZE": 4, "OPT_BATCH_SIZE": 2}}


@pytest.mark.parametrize(("args", "fragment"), [
    (("--workspace=64",), "--workspace=64"),
    (("--memPoolSize=bogus:1",), "bogus:1"),
    (("--minShapes=input:1x2", "--maxShapes=input:{MISSING}x2"), "MISSING"),
    (("--minShapes=input:4x2", "--maxShapes=input:1x2"), "min <= opt <= max"),
    (("--minShapes=input:1x2", "--maxShapes=input:4x2x1"), "same rank"),
    (("--minShapes=input:1xA",), "integer dimensions"),
])
def test_bad_flags_are_rejected_by_name(args: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(ModelFolderError) as exc:
        parse_trt_info(_doc(*args))
    assert fragment in str(exc.value)


def test_flags_that_change_the_plan_are_parsed() -> None:
    spec = parse_trt_info(_doc("--fp16", "--noTF32", "--versionCompatible",
                               "--hardwareCompatibilityLevel=ampere+",
                               "--builderOptimizationLevel=3"))
    assert spec.fp16 and spec.no_tf32 and spec.version_compatible
    assert spec.hardware_compatibility_level == "ampere+"
    assert spec.builder_optimization_level == 3


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"trt_info\.json"):
        load_trt_info(tmp_path)
