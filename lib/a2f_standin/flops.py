"""Count the arithmetic cost of an ONNX graph (MatMul, Gemm, Conv, GRU), 1 MAC = 2 FLOP."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import shape_inference


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of the graph (without weights) whose symbolic input dims are set to ``batch``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:  # keep dims and type, drop payloads: shapes are enough
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.ClearField("int64_data")
        init.ClearField("int32_data")
    for vi in list(m.graph.input) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.dim_value = batch
    return m


def _shapes(model: onnx.ModelProto, batch: int) -> dict[str, tuple[int, ...]]:
    fixed = _fix_batch(model, batch)
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    # Shape inference needs constant values for Reshape targets: keep the small ones.
    small = [i for i in model.graph.initializer if int(np.prod(i.dims)) <= 16]
    keep = {i.name for i in small}
    for init in fixed.graph.initializer:
        if init.name in keep:
            init.CopyFrom(next(i for i in small if i.name == init.name))
    inferred = shape_inference.infer_shapes(fixed, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = dict(inits)
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def count_flops(model: onnx.ModelProto | str | os.PathLike[str], batch: int = 1) -> int:
    """FLOPs of one inference at ``batch`` rows, counting MatMul, Gemm, Conv and GRU."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    shapes = _shapes(model, batch)
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            out = shapes[node.output[0]]
            a = shapes[node.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            total += 2 * int(np.prod(out)) * k
        elif node.op_type == "Conv":
            out = shapes[node.output[0]]
            w = shapes[node.input[1]]  # [Cout, Cin/group, k...]
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "GRU":
            x = shapes[node.input[0]]  # [seq, batch, input]
            w = shapes[node.input[1]]  # [dirs, 3*hidden, input]
            r = shapes[node.input[2]]  # [dirs, 3*hidden, hidden]
            total += 2 * x[0] * x[1] * w[0] * (w[1] * w[2] + r[1] * r[2])
    return total
