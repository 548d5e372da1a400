"""The server's modes as types: a mistyped mode fails type-checking, not at run time."""

from __future__ import annotations

from typing import Literal, get_args

#: Which engine a model is served with: ``require-built`` serves only a valid engine built
#: for this machine; ``onnx-fallback`` serves ``network.onnx`` with ONNX Runtime meanwhile.
EnginePolicy = Literal["require-built", "onnx-fallback"]
#: Where post-processing runs: ``overlap`` on its own thread while the engine runs the next
#: batch; ``inline`` on the inference worker.
PostprocessMode = Literal["overlap", "inline"]

ENGINE_POLICIES: tuple[EnginePolicy, ...] = get_args(EnginePolicy)
POSTPROCESS_MODES: tuple[PostprocessMode, ...] = get_args(PostprocessMode)


def as_engine_policy(value: str) -> EnginePolicy:
    """``value`` as an :data:`EnginePolicy` (ValueError naming the allowed ones)."""
    for policy in ENGINE_POLICIES:
        if value == policy:
            return policy
    raise ValueError(f"engine policy {value!r}, expected one of {ENGINE_POLICIES}")


def as_postprocess_mode(value: str) -> PostprocessMode:
    """``value`` as a :data:`PostprocessMode` (ValueError naming the allowed ones)."""
    for mode in POSTPROCESS_MODES:
        if value == mode:
            return mode
    raise ValueError(f"postprocess mode {value!r}, expected one of {POSTPROCESS_MODES}")
