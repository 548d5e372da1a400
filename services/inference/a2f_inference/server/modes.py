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
