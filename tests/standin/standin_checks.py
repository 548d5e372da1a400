"""Helpers running stand-in networks through real ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from a2f_volume.model_folder import load_model_folder

REGRESSION_FILES = (
    "model.json", "network.onnx", "network_info.json", "model_config.json", "model_data.npz",
    "implicit_emo_db.npz", "bs_skin.npz", "bs_skin_config.json", "bs_tongue.npz",
    "bs_tongue_config.json", "trt_info.json",
)  # fmt: skip


def diffusion_files(identities: Sequence[str] = ("Claire", "James", "Mark")) -> list[str]:
    out = ["model.json", "network.onnx", "network_info.json", "trt_info.json"]
    for x in identities:
        out += [
            f"model_config_{x}.json",
            f"model_data_{x}.npz",
            f"bs_skin_{x}.npz",
            f"bs_skin_config_{x}.json",
            f"bs_tongue_{x}.npz",
            f"bs_tongue_config_{x}.json",
        ]
    return out


def vowel(n: int, amp: float, f0: float = 140.0, sr: int = 16000) -> np.ndarray:
    """A voiced, vowel-like signal: harmonics of f0 with a formant boost, peak ``amp``."""
    t = np.arange(n) / sr
    s = np.zeros(n)
    for h in range(1, 25):
        boost = 2.0 if 500.0 < f0 * h < 900.0 else 1.0
        s += boost / h * np.sin(2 * np.pi * f0 * h * t + 0.3 * h)
    return (amp * s / np.abs(s).max()).astype(np.float32)


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _projection(delta: np.ndarray, pose: np.ndarray) -> float:
    return float(delta.astype(np.float64) @ pose / (pose.astype(np.float64) @ pose))


def regression_jaw_projection(folder: Path, amps: Sequence[float]) -> list[float]:
    """Decoded skin delta projected on JawOpen (in pose units) for vowels of each peak amp."""
    mf = load_model_folder(folder)
    assert mf.regression is not None
    ident = mf.identity(None)
    assert ident.skin_pca is not None
    jaw = ident.skin.deltas[ident.skin.pose_names.index("jawOpen")]
    spec = mf.regression
    emotion = np.zeros((len(amps), 1, spec.emotion_size), np.float32)
    emotion[:, 0, : spec.implicit_emotion_len] = spec.implicit_emotion
    audio = np.stack([vowel(mf.audio.buffer_len, a) for a in amps])[:, None, :]
    (result,) = _session(mf.onnx_path).run(["result"], {"input": audio, "emotion": emotion})
    coeffs = result[:, 0, : spec.num_shapes_skin]
    return [_projection(c @ ident.skin_pca, jaw) for c in coeffs]


def diffusion_jaw_projection(
    folder: Path, amps: Sequence[float], identity: int = 2
) -> tuple[list[float], list[float], float]:
    """Per amp: mean valid-frame skin delta on JawOpen, max |prediction|; and noise effect."""
    mf = load_model_folder(folder)
    d = mf.diffusion
    assert d is not None
    ident = mf.identities[identity]
    jaw = ident.skin.deltas[ident.skin.pose_names.index("jawOpen")]
    sess = _session(mf.onnx_path)
    rng = np.random.default_rng(7)
    one_hot = np.zeros((1, len(mf.identities)), np.float32)
    one_hot[0, identity] = 1.0

    def run(amp: float, noise: np.ndarray) -> np.ndarray:
        feeds = {
            "window": vowel(mf.audio.buffer_len, amp)[None],
            "identity": one_hot,
            "emotion": np.zeros((1, d.center, len(mf.emotions)), np.float32),
            "input_latents": np.zeros(
                (d.num_diffusion_steps, d.num_gru_layers, 1, d.gru_latent_dim), np.float32
            ),
            "noise": noise,
        }
        return sess.run(["prediction"], feeds)[0][0]

    shape = (1, d.num_diffusion_steps + 1, d.num_frames, d.frame_size)
    proj, max_abs = [], []
    valid = slice(d.left_truncate, d.left_truncate + d.center)
    for amp in amps:
        pred = run(amp, rng.standard_normal(shape, dtype=np.float32))
        proj.append(_projection(pred[valid, : d.skin_size].mean(axis=0), jaw))
        max_abs.append(float(np.abs(pred).max()))
    a = run(0.3, rng.standard_normal(shape, dtype=np.float32))
    b = run(0.3, rng.standard_normal(shape, dtype=np.float32))
    return proj, max_abs, float(np.abs(a - b).max())
