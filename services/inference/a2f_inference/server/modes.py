"""Typed modes of the inference server."""

from __future__ import annotations

from typing import Literal

EnginePolicy = Literal["require-built", "onnx-fallback"]
PostprocessMode = Literal["overlap", "inline"]
