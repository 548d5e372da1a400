"""Helpers of the engine-builder tests: stand-in model folders on a real volume, real ORT."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import onnx
from onnx import numpy_helper
from prometheus_client import CollectorRegistry

from a2f_engine_builder.backends import OnnxRuntimeBackend
from a2f_engine_builder.builder import EngineBuilder
from a2f_engine_builder.metrics import BuilderMetrics
from a2f_standin import generate
from a2f_volume.hashing import HashCache
from a2f_volume.layout import hash_cache_path

REPO = Path(__file__).resolve().parents[2]


def make_model(root: Path, name: str, kind: str = "regression", seed: int = 0) -> Path:
    """A small stand-in model folder ``root/name`` (NVIDIA's exact file layout)."""
    return generate(kind, root / name, size="small", seed=seed)


def rewrite_onnx_same_size(onnx_path: Path) -> None:
    """Change one weight of the ONNX, keeping the byte size; then forge an older mtime."""
    st = os.stat(onnx_path)
    model = onnx.load(str(onnx_path))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data) or t.dims[0])
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    tmp = onnx_path.with_name("rewrite.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, onnx_path)
    assert os.stat(onnx_path).st_size == st.st_size, "rewrite changed the size"
    os.utime(onnx_path, ns=(st.st_atime_ns - 10**10, st.st_mtime_ns - 10**10))


def builder_for(root: Path, registry: CollectorRegistry | None = None,
                backend: OnnxRuntimeBackend | None = None) -> EngineBuilder:
    metrics = BuilderMetrics(registry or CollectorRegistry())
    return EngineBuilder(root, backend or OnnxRuntimeBackend(threads=1),
                         HashCache(hash_cache_path(root)), metrics)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def builder_cmd(root: Path, *args: str, metrics_port: int = -1) -> list[str]:
    return [sys.executable, "-m", "a2f_engine_builder.cli", "--models-root", str(root),
            "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
            "--ort-threads", "1", *args]


def builder_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SKIP_TRT_BUILD", "FORCE_TRT_REBUILD")
           and not k.startswith("A2F_ENGINE_BUILDER_")}
    env.update(extra)
    return env


def run_builder(root: Path, *args: str, timeout: float = 120, **env: str
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(builder_cmd(root, *args), env=builder_env(**env), text=True,
                          capture_output=True, timeout=timeout, check=False)


def write_regression_onnx(path: Path, hidden: int = 1024, seed: int = 0) -> None:
    """A regression-interface ONNX (input [B,1,8320] + emotion [B,1,26] -> result [B,1,301])
    whose first layer has ``8320 x hidden`` float weights (~33 MB at 1024): big enough that
    hashing, optimising and verifying it take a noticeable time."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    nodes = [helper.make_node("MatMul", ["input", "W1"], ["a"]),
             helper.make_node("MatMul", ["emotion", "W2"], ["e"]),
             helper.make_node("Add", ["a", "e"], ["s"]),
             helper.make_node("Add", ["s", "b1"], ["s1"]),
             helper.make_node("Relu", ["s1"], ["h"]),
             helper.make_node("MatMul", ["h", "W3"], ["result"])]
    graph = helper.make_graph(
        nodes, "regression",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 1, 8320]),
         helper.make_tensor_value_info("emotion", TensorProto.FLOAT, ["B", 1, 26])],
        [helper.make_tensor_value_info("result", TensorProto.FLOAT, ["B", 1, 301])],
        [w("W1", (8320, hidden), 0.01), w("W2", (26, hidden), 0.1),
         w("b1", (hidden,), 0.1), w("W3", (hidden, 301), 0.05)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    tmp = path.with_name(path.name + ".partial")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
