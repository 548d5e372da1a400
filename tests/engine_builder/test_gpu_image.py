"""The GPU images' TensorRT choice: one base image, new enough, checked at build time."""

from __future__ import annotations

import re

import pytest

from a2f_engine.targets import TENSORRT_MIN_VERSION

from .helpers import REPO

GPU_SERVICES = ("inference", "engine-builder")
# NVIDIA's TensorRT container releases and the TensorRT they ship (container release notes).
NGC_TENSORRT = {"24.09": (10, 4), "25.01": (10, 8), "25.03": (10, 9), "25.06": (10, 11),
                "25.10": (10, 13), "25.11": (10, 14)}


def _default_base(service: str) -> str:
    text = (REPO / "services" / service / "Dockerfile").read_text(encoding="utf-8")
    return next(line.split("=", 1)[1] for line in text.splitlines()
                if line.startswith("ARG BASE_IMAGE="))


def test_both_gpu_images_start_from_the_same_tensorrt_image() -> None:
    assert len({_default_base(s) for s in GPU_SERVICES}) == 1


def test_default_tensorrt_image_meets_the_models_minimum() -> None:
    m = re.fullmatch(r"nvcr\.io/nvidia/tensorrt:(\d\d\.\d\d)-py3", _default_base("inference"))
    assert m, _default_base("inference")
    assert NGC_TENSORRT[m.group(1)] >= TENSORRT_MIN_VERSION


@pytest.mark.parametrize("service", GPU_SERVICES)
def test_gpu_build_fails_without_a_usable_tensorrt(service: str) -> None:
    text = (REPO / "services" / service / "Dockerfile").read_text(encoding="utf-8")
    assert "check_tensorrt_version(tensorrt.__version__)" in text
    assert 'pip install -q "cuda-python==${cuda}.*"' in text
