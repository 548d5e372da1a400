"""Inference engines: one interface, a backend per runtime (ONNX Runtime, TensorRT).

Used by the engine-builder (to verify an engine before publishing it) and by the inference
server (to run it). Neither service imports the other; both import this package.
"""

from a2f_engine.base import Engine, TensorSpec

__all__ = ["Engine", "TensorSpec"]
