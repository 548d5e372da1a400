"""A stand-in Audio2Emotion (A2E) model folder in NVIDIA's layout, whose logits follow the audio.

The network maps each audio window ``input_values`` [B, T] (16 kHz, T dynamic) to logits
``output`` [B, 6] over the classes angry, disgust, fear, happy, neutral, sad, from two
features computed with plain ONNX ops:

* loudness ``u = clip((ln(rms + 1e-4) + 7) / 6, 0, 1)``: 0 at silence, about 0.4 for quiet
  speech (rms 0.01), about 1 for loud speech (rms 0.3);
* brightness ``z = clip(6 * zcr, 0, 1)`` from the zero-crossing rate (a 100 Hz tone gives
  0.075, a 1 kHz tone 0.75): higher pitch and more fricatives give larger values.

Each class has a prototype point in the (u, z) plane (:data:`PROTOTYPES`); its logit is
``-SHARPNESS * squared distance``. Silence sits on the neutral prototype, quiet low voices
near sad, quiet bright voices near fear, loud low voices near angry, loud bright voices near
happy, the middle near disgust. A seeded random conv branch (more channels at
``size="full"``, for a realistic cost) runs on the loudness-normalised waveform and adds a
bounded term (``BRANCH_SCALE * tanh``, no biases, exactly 0 at silence).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from a2f_volume.emotion_folder import (
    A2E_CLASSES,
    DEFAULT_CORRESPONDENCE,
    DEFAULT_WINDOW_SAMPLES,
    INPUT_NAME,
    OUTPUT_NAME,
)
from a2f_volume.publish import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

SAMPLERATE = 16000
SHARPNESS = 10.0
BRANCH_SCALE = 0.25
ZCR_SCALE = 6.0
#: (loudness, brightness) prototype of each class, in :data:`A2E_CLASSES` order.
PROTOTYPES: tuple[tuple[float, float], ...] = (
    (0.95, 0.15),  # angry: loud, low
    (0.65, 0.45),  # disgust: medium
    (0.45, 0.80),  # fear: quiet, bright
    (0.95, 0.75),  # happy: loud, bright
    (0.00, 0.00),  # neutral: silence
    (0.40, 0.10),  # sad: quiet, low
)
#: Conv branch per size: (channels, kernel, stride, second layer).
_BRANCH = {"small": (16, 400, 320, False), "full": (512, 400, 320, True)}
SIZES = ("full", "small")

#: NVIDIA's post-processing defaults (the NIM's defaults for the header's parameters).
POST_PROCESSING_CONFIG: dict[str, Any] = {
    "output_emotion_length": 10,
    "emotion_contrast": 1.0,
    "live_blend_coef": 0.7,
    "preferred_emotion_strength": 0.5,
    "fixed_dt": 1.0 / 30.0,
    "transition_smoothing": 0.5,
    "enable_preferred_emotion": True,
    "preferred_emotion": [0.0] * 10,
    "emotion_strength": 0.6,
    "max_emotions": 3,
    "emotion_correspondence": dict(DEFAULT_CORRESPONDENCE),
}


class _Nodes:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def build_emotion_network(size: str, seed: int) -> onnx.ModelProto:
    """The A2E stand-in graph (opset 17): ``input_values`` [B, T] -> ``output`` [B, 6]."""
    if size not in _BRANCH:
        raise ValueError(f"size {size!r} unknown; expected one of {', '.join(SIZES)}")
    rng = np.random.default_rng(seed)
    g = _Nodes()
    x = INPUT_NAME
    # loudness
    ms = g.op("ReduceMean", [g.op("Mul", [x, x])], axes=[1], keepdims=1)  # [B, 1]
    rms = g.op("Sqrt", [ms])
    energy = g.op("Log", [g.op("Add", [rms, g.const("rms_floor", 1e-4)])])
    u = g.op("Div", [g.op("Add", [energy, g.const("loud_shift", 7.0)]),
                     g.const("loud_range", 6.0)])
    u = g.op("Clip", [u, g.const("zero", 0.0), g.const("one", 1.0)])
    # zero-crossing rate
    sign = g.op("Sign", [x])
    axis = g.const("axis1", [1], np.int64)
    later = g.op("Slice", [sign, g.const("s1", [1], np.int64),
                           g.const("big", [np.iinfo(np.int64).max], np.int64), axis])
    earlier = g.op("Slice", [sign, g.const("s0", [0], np.int64),
                             g.const("m1", [-1], np.int64), axis])
    flips = g.op("Abs", [g.op("Sub", [later, earlier])])
    zcr = g.op("Mul", [g.op("ReduceMean", [flips], axes=[1], keepdims=1),
                       g.const("half_zcr", 0.5 * ZCR_SCALE)])
    z = g.op("Clip", [zcr, "zero", "one"])
    # distance to the class prototypes
    feat = g.op("Unsqueeze", [g.op("Concat", [u, z], axis=1), axis])  # [B, 1, 2]
    diff = g.op("Sub", [feat, g.const("prototypes", PROTOTYPES)])  # [B, 6, 2]
    d2 = g.op("ReduceSum", [g.op("Mul", [diff, diff]), g.const("axis2", [2], np.int64)],
              keepdims=0)
    logits = g.op("Mul", [d2, g.const("neg_sharpness", -SHARPNESS)])
    # seeded conv branch on the loudness-normalised waveform (0 at silence)
    channels, kernel, stride, second = _BRANCH[size]
    xn = g.op("Div", [x, g.op("Add", [rms, g.const("norm_floor", 1e-3)])])
    h = g.op("Unsqueeze", [xn, axis])  # [B, 1, T]
    w1 = rng.standard_normal((channels, 1, kernel)) * np.sqrt(2.0 / kernel)
    h = g.op("Relu", [g.op("Conv", [h, g.const("conv1_w", w1)], kernel_shape=[kernel],
                           strides=[stride])])
    if second:
        w2 = rng.standard_normal((channels, channels, 3)) * np.sqrt(2.0 / (3 * channels))
        h = g.op("Relu", [g.op("Conv", [h, g.const("conv2_w", w2)], kernel_shape=[3],
                               pads=[1, 1])])
    pooled = g.op("ReduceMean", [h], axes=[2], keepdims=0)  # [B, C]
    head = rng.standard_normal((channels, len(A2E_CLASSES))) / np.sqrt(channels)
    branch = g.op("Tanh", [g.op("MatMul", [pooled, g.const("head_w", head)])])
    branch = g.op("Mul", [branch, g.const("branch_scale", BRANCH_SCALE)])
    g.nodes.append(helper.make_node("Add", [logits, branch], [OUTPUT_NAME], name="logits"))
    graph = helper.make_graph(
        g.nodes,
        "a2e_standin",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                       ["batch", len(A2E_CLASSES)])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="a2f-standin", producer_version="1", ir_version=8)
    onnx.checker.check_model(model)
    return model


def reference_features(audio: np.ndarray) -> tuple[float, float]:
    """(loudness, brightness) of one window, as the graph computes them (for tests/docs)."""
    x = np.asarray(audio, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x * x)))
    u = float(np.clip((np.log(rms + 1e-4) + 7.0) / 6.0, 0.0, 1.0))
    s = np.sign(x)
    zcr = float(np.mean(np.abs(s[1:] - s[:-1])) * 0.5)
    return u, float(np.clip(zcr * ZCR_SCALE, 0.0, 1.0))


def _trt_info(window: int, max_batch: int, opt_batch: int) -> dict[str, Any]:
    def shapes(flag: str, batch: str) -> str:
        return f"{flag}{INPUT_NAME}:{batch}x{window}"

    return {
        "trt_build_param": {
            "batch": [
                shapes("--minShapes=", "1"),
                shapes("--optShapes=", "{OPT_BATCH_SIZE}"),
                shapes("--maxShapes=", "{MAX_BATCH_SIZE}"),
            ],
        },
        "defaults": {"MAX_BATCH_SIZE": max_batch, "OPT_BATCH_SIZE": opt_batch},
        "estimated_build_time_s": 30,
    }


def generate_emotion(out_dir: str | os.PathLike[str], size: str = "small", seed: int = 0) -> Path:
    """Write a complete A2E stand-in folder into ``out_dir`` and return it.

    Byte-identical for the same size and seed; every file is published atomically and
    ``model.json`` comes last.
    """
    if size not in SIZES:
        raise ValueError(f"size {size!r} unknown; expected one of {', '.join(SIZES)}")
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    t0 = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_emotion_network(size, seed)
    atomic_write_bytes(out / "network.onnx", model.SerializeToString())
    atomic_write_json(out / "network_info.json",
                      {"audio_params": {"samplerate": SAMPLERATE}, "emotions": list(A2E_CLASSES)})
    atomic_write_json(out / "model_config.json",
                      {"post_processing_config": POST_PROCESSING_CONFIG})
    atomic_write_json(out / "trt_info.json", _trt_info(DEFAULT_WINDOW_SAMPLES, 128, 10))
    atomic_write_json(out / "model.json", {
        "networkInfoPath": "network_info.json",
        "networkPath": "network.trt",
        "modelConfigPath": "model_config.json",
    })
    logger.info("emotion stand-in: done: %s (%.1f s)", out, time.monotonic() - t0)
    return out
