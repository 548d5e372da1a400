"""ONNX graphs of the stand-in networks, built with ``onnx.helper``.

Both networks share an audio front end: a strided Conv1d bank of fixed band-pass filters,
squared, average-pooled and log-compressed (``log(1 + gain * energy)``, exactly 0 at
silence). The mean of that band energy, through ``tanh``, is the *activation*: 0 at silence,
rising with loudness. The activation drives the coefficients whose decoded delta is mostly
JawOpen; every other path (a strided conv stack, GRUs, dense heads) has random small weights
and no biases, so zero audio gives exactly zero output apart from the diffusion noise terms.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRODUCER = "a2f-standin"
ENERGY_GAIN = 1.0e4  # log(1 + gain * band energy)
LOUDNESS_SCALE = 1.5  # activation = tanh(mean log energy / scale)


def _band_filters(n_bands: int, kernel: int, samplerate: int) -> np.ndarray:
    """Hann-windowed cosine band-pass filters, log-spaced 100 Hz..4 kHz, unit passband gain."""
    freqs = np.geomspace(100.0, 4000.0, n_bands)
    t = (np.arange(kernel) - (kernel - 1) / 2.0) / samplerate
    win = np.hanning(kernel)
    filt = win[None, :] * np.cos(2.0 * np.pi * freqs[:, None] * t[None, :])
    filt /= win.sum() / 2.0
    return filt[:, None, :].astype(np.float32)  # [C, 1, K]


class _Graph:
    """A small builder collecting nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer; a name already defined is reused (callers pass equal values)."""
        if name not in self._names:
            self._names.add(name)
            self.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        self._n += 1
        outs = [f"{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self._n}", **attrs)
        )
        return outs

    def one(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        return self.op(op_type, inputs, **attrs)[0]


def _he(
    rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, gain: float = 1.0
) -> np.ndarray:
    return (rng.standard_normal(shape) * gain * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _finish(
    g: _Graph,
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    opset: int,
) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name=PRODUCER,
        producer_version="1",
        ir_version=8,
    )
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class RegressionNet:
    """Sizes and drive of the regression network."""

    buffer_len: int
    emotion_len: int  # implicit + explicit
    result_len: int
    drive: np.ndarray  # [result_len] coefficients at activation 1
    band_channels: int
    band_kernel: int
    conv_channels: tuple[int, int, int]
    hidden: int
    noise_scale: float  # std of the random head outputs relative to 1


def build_regression(
    net: RegressionNet, rng: np.random.Generator, samplerate: int
) -> onnx.ModelProto:
    """input [B,1,buffer_len], emotion [B,1,E] -> result [B,1,R] (opset 14)."""
    g = _Graph()
    c1, k1, stride1 = net.band_channels, net.band_kernel, 4
    w1 = g.const("encoder.band.weight", _band_filters(c1, k1, samplerate))
    x = g.one("Conv", ["input", w1], strides=[stride1], kernel_shape=[k1])
    sq = g.one("Mul", [x, x])
    pool = 16
    e = g.one("AveragePool", [sq], kernel_shape=[pool], strides=[pool])
    t1 = ((net.buffer_len - k1) // stride1 + 1 - pool) // pool + 1
    gain = g.const("encoder.energy_gain", np.array(ENERGY_GAIN, dtype=np.float32))
    one = g.const("one", np.array(1.0, dtype=np.float32))
    lg = g.one("Log", [g.one("Add", [g.one("Mul", [e, gain]), one])])  # [B, C1, T1] >= 0
    # activation: Hann-weighted time average of the mean band energy, through tanh
    tw = np.hanning(t1 + 2)[1:-1]
    tw = (tw / tw.sum()).astype(np.float32).reshape(t1, 1)
    lt = g.one("MatMul", [lg, g.const("encoder.time_window", tw)])  # [B, C1, 1]
    loud = g.one("ReduceMean", [lt], axes=[1], keepdims=0)  # [B, 1]
    scale = g.const("encoder.loudness_scale", np.array(LOUDNESS_SCALE, dtype=np.float32))
    act = g.one("Tanh", [g.one("Div", [loud, scale])])  # [B, 1]
    # learned-looking conv stack (random weights, no biases)
    ch = (c1, *net.conv_channels)
    h = lg
    for i, (cin, cout, k) in enumerate(zip(ch[:-1], ch[1:], (5, 3, 3), strict=True)):
        w = g.const(f"encoder.conv{i + 2}.weight", _he(rng, (cout, cin, k), cin * k))
        h = g.one("Relu", [g.one("Conv", [h, w], strides=[2], kernel_shape=[k])])
    pooled = g.one("ReduceMean", [h], axes=[2], keepdims=0)  # [B, C4]
    emo = g.one("Reshape", ["emotion", g.const("emotion_shape", np.array([-1, net.emotion_len]))])
    emo_gated = g.one("Mul", [emo, act])  # emotions shape speech, silence stays neutral
    feat = g.one("Concat", [pooled, emo_gated], axis=1)
    fin = net.conv_channels[-1] + net.emotion_len
    wh = g.const("head.fc1.weight", _he(rng, (fin, net.hidden), fin))
    hid = g.one("Relu", [g.one("Gemm", [feat, wh])])
    wo = rng.standard_normal((net.hidden, net.result_len)) * net.noise_scale / np.sqrt(net.hidden)
    rnd = g.one("Gemm", [hid, g.const("head.fc2.weight", wo.astype(np.float32))])
    drive = g.one("Mul", [act, g.const("head.drive", net.drive.reshape(1, -1).astype(np.float32))])
    res = g.one("Add", [drive, rnd])
    shape = g.const("result_shape", np.array([-1, 1, net.result_len]))
    g.nodes.append(helper.make_node("Reshape", [res, shape], ["result"], name="Reshape_result"))
    f = TensorProto.FLOAT
    return _finish(
        g,
        "a2f_regression_standin",
        [
            helper.make_tensor_value_info("input", f, ["batch", 1, net.buffer_len]),
            helper.make_tensor_value_info("emotion", f, ["batch", 1, net.emotion_len]),
        ],
        [helper.make_tensor_value_info("result", f, ["batch", 1, net.result_len])],
        14,
    )


@dataclass(frozen=True)
class DiffusionNet:
    """Sizes and drive of the diffusion network."""

    buffer_len: int  # window samples (16000)
    num_identities: int
    num_emotions: int
    center: int  # frames with emotions (30)
    left: int  # truncated warm-up frames (15)
    right: int
    frame_size: int  # values per frame (skin + tongue + jaw + eyes)
    steps: int  # diffusion steps (2)
    gru_layers: int  # (2)
    gru_dim: int  # (256)
    rank: int  # low-rank decoder rank
    decoder: np.ndarray  # [rank, frame_size], orthonormal rows
    identity_drive: np.ndarray  # [num_identities, rank] latent at activation 1
    band_channels: int
    conv_channels: tuple[int, int]


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_in, n_out] averaging each output frame's span of the input sequence."""
    m = np.zeros((n_in, n_out), dtype=np.float64)
    edges = np.linspace(0.0, n_in, n_out + 1)
    for j in range(n_out):
        lo, hi = edges[j], edges[j + 1]
        for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
            m[i, j] = max(0.0, min(hi, i + 1) - max(lo, i))
        m[:, j] /= m[:, j].sum()
    return m.astype(np.float32)


def build_diffusion(net: DiffusionNet, rng: np.random.Generator) -> onnx.ModelProto:
    """window, identity, emotion, input_latents, noise -> prediction, output_latents."""
    g = _Graph()
    frames = net.left + net.center + net.right
    f_size, rank, dim = net.frame_size, net.rank, net.gru_dim
    c1, k1, stride1 = net.band_channels, 128, 8
    x = g.one("Unsqueeze", ["window", g.const("axis1", np.array([1]))])  # [B, 1, N]
    w1 = g.const("encoder.band.weight", _band_filters(c1, k1, 16000))
    pad = (k1 - stride1) // 2
    c = g.one("Conv", [x, w1], strides=[stride1], kernel_shape=[k1], pads=[pad, pad])
    sq = g.one("Mul", [c, c])
    pool = 8
    e = g.one("AveragePool", [sq], kernel_shape=[pool], strides=[pool])
    t1 = ((net.buffer_len + 2 * pad - k1) // stride1 + 1 - pool) // pool + 1
    gain = g.const("encoder.energy_gain", np.array(ENERGY_GAIN, dtype=np.float32))
    one = g.const("one", np.array(1.0, dtype=np.float32))
    lg = g.one("Log", [g.one("Add", [g.one("Mul", [e, gain]), one])])  # [B, C1, T1]
    fr = g.one("MatMul", [lg, g.const("encoder.frame_pool", _interp_matrix(t1, frames))])
    loud = g.one("ReduceMean", [fr], axes=[1], keepdims=1)  # [B, 1, F]
    scale = g.const("encoder.loudness_scale", np.array(LOUDNESS_SCALE, dtype=np.float32))
    act = g.one("Transpose", [g.one("Tanh", [g.one("Div", [loud, scale])])], perm=[0, 2, 1])
    h = fr
    ch = (c1, *net.conv_channels)
    for i, (cin, cout) in enumerate(itertools.pairwise(ch)):
        w = g.const(f"encoder.conv{i + 2}.weight", _he(rng, (cout, cin, 3), cin * 3))
        h = g.one("Relu", [g.one("Conv", [h, w], kernel_shape=[3], pads=[1, 1])])
    seq = g.one("Transpose", [h], perm=[2, 0, 1])  # [F, B, C]
    # conditioning: identity picks its drive, emotions (edge-padded to all frames) add to it
    idl = g.one(
        "MatMul",
        ["identity", g.const("cond.identity_drive", net.identity_drive.astype(np.float32))],
    )
    drive = g.one("Mul", [act, g.one("Unsqueeze", [idl, g.const("axis1b", np.array([1]))])])
    pads = g.const("emotion_pads", np.array([0, net.left, 0, 0, net.right, 0], dtype=np.int64))
    emo = g.one("Pad", ["emotion", pads], mode="edge")  # [B, F, E]
    we = rng.standard_normal((net.num_emotions, rank)) * 0.05 / np.sqrt(net.num_emotions)
    emo_l = g.one(
        "Mul", [g.one("MatMul", [emo, g.const("cond.emotion", we.astype(np.float32))]), act]
    )
    cond = g.one("Add", [drive, emo_l])  # [B, F, rank]
    decoder = g.const("decoder.weight", net.decoder.astype(np.float32))  # [rank, f_size]
    flat_shape = g.const("flat_shape", np.array([-1, f_size]))
    lat_shape = g.const("latent_shape", np.array([-1, frames, rank]))
    noise_eps = g.const("denoise.eps", np.array(1e-3, dtype=np.float32))
    state_idx = net.left + net.center - 1  # state after the last valid frame
    sigmas = [1.0] * (net.steps - 1) + [5e-4]
    x_t = g.one("Gather", ["noise", g.const("idx0", np.array(0))], axis=1)  # [B, F, f_size]
    step_states: list[str] = []
    for k in range(net.steps):
        # project the current sample onto the decoder basis (shares the decoder weights)
        z = g.one("Gemm", [g.one("Reshape", [x_t, flat_shape]), decoder], transB=1)
        z = g.one("Reshape", [z, lat_shape])
        layer_in = seq
        states = []
        for layer in range(net.gru_layers):
            fin = net.conv_channels[-1] if layer == 0 else dim
            w_in = _he(rng, (1, 3 * dim, fin), fin, 0.5)
            r_rec = (rng.standard_normal((1, 3 * dim, dim)) * 0.5 / np.sqrt(dim)).astype(np.float32)
            h0 = g.one("Gather", ["input_latents", g.const(f"k{k}", np.array(k))], axis=0)
            h0 = g.one("Gather", [h0, g.const(f"k{k}l{layer}", np.array(layer))], axis=0)
            h0 = g.one("Unsqueeze", [h0, g.const(f"axis0_{k}_{layer}", np.array([0]))])
            y, _ = g.op(
                "GRU",
                [
                    layer_in,
                    g.const(f"denoise{k}.gru{layer}.W", w_in),
                    g.const(f"denoise{k}.gru{layer}.R", r_rec),
                    "",
                    "",
                    h0,
                ],
                n_out=2,
                hidden_size=dim,
                linear_before_reset=1,
            )
            layer_in = g.one("Squeeze", [y, g.const(f"axis1_{k}_{layer}", np.array([1]))])
            st = g.one("Gather", [layer_in, g.const(f"t{k}_{layer}", np.array(state_idx))], axis=0)
            states.append(g.one("Unsqueeze", [st, g.const(f"axis0s_{k}_{layer}", np.array([0]))]))
        step_states.append(g.one("Concat", states, axis=0))  # [L, B, D]
        wg = rng.standard_normal((dim, rank)) * 0.02 / np.sqrt(dim)
        gl = g.one(
            "MatMul",
            [
                g.one("Transpose", [layer_in], perm=[1, 0, 2]),
                g.const(f"denoise{k}.head", wg.astype(np.float32)),
            ],
        )
        lat = g.one("Add", [g.one("Add", [cond, gl]), g.one("Mul", [z, noise_eps])])
        x0 = g.one("MatMul", [lat, decoder])  # [B, F, f_size]: the predicted clean sample
        nz = g.one("Gather", ["noise", g.const(f"idx{k + 1}", np.array(k + 1))], axis=1)
        sig = g.const(f"denoise{k}.sigma", np.array(sigmas[k], dtype=np.float32))
        out_name = "prediction" if k == net.steps - 1 else f"x_{k + 1}"
        g.nodes.append(
            helper.make_node("Add", [x0, g.one("Mul", [nz, sig])], [out_name], name=f"step{k}")
        )
        x_t = out_name
    stacked = [
        g.one("Unsqueeze", [s, g.const(f"axis0o_{i}", np.array([0]))])
        for i, s in enumerate(step_states)
    ]
    g.nodes.append(helper.make_node("Concat", stacked, ["output_latents"], axis=0, name="latents"))
    f = TensorProto.FLOAT
    latent_shape: list[str | int] = [net.steps, net.gru_layers, "batch", dim]
    return _finish(
        g,
        "a2f_diffusion_standin",
        [
            helper.make_tensor_value_info("window", f, ["batch", net.buffer_len]),
            helper.make_tensor_value_info("identity", f, ["batch", net.num_identities]),
            helper.make_tensor_value_info("emotion", f, ["batch", net.center, net.num_emotions]),
            helper.make_tensor_value_info("input_latents", f, latent_shape),
            helper.make_tensor_value_info("noise", f, ["batch", net.steps + 1, frames, f_size]),
        ],
        [
            helper.make_tensor_value_info("prediction", f, ["batch", frames, f_size]),
            helper.make_tensor_value_info("output_latents", f, latent_shape),
        ],
        14,
    )
