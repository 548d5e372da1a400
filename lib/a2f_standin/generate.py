"""Write complete stand-in model folders (regression or diffusion) in NVIDIA's layout.

The JSON documents come from :mod:`a2f_standin.documents`, the per-identity geometry and
blendshape files from :mod:`a2f_standin.identity`, the networks from
:mod:`a2f_standin.networks`; this module sizes them and writes one folder.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from a2f_standin import mesh as M
from a2f_standin.documents import (
    SAMPLERATE,
    diffusion_model_json,
    diffusion_network_info,
    model_config,
    regression_model_json,
    regression_network_info,
    trt_info,
)
from a2f_standin.identity import (
    BlendshapePaths,
    make_identity,
    orthonormal_rows,
    saccade,
    write_blendshapes,
    write_npz,
)
from a2f_standin.networks import (
    DiffusionNet,
    RegressionNet,
    build_diffusion,
    build_regression,
)
from a2f_volume.model_folder import EMOTIONS, JAW_SIZE
from a2f_volume.publish import atomic_write_bytes, atomic_write_json

__all__ = [
    "DIFFUSION_IDENTITIES",
    "GENERATOR_VERSION",
    "KINDS",
    "SIZES",
    "Kind",
    "Size",
    "generate",
    "write_npz",
]

logger = logging.getLogger(__name__)

#: Bumped whenever generated content changes (keys caches of generated folders).
#: 2: ``network_info.json`` holds ``audio_params`` at the top level, as NVIDIA's files do.
GENERATOR_VERSION = 2

Kind = Literal["regression", "diffusion"]
Size = Literal["full", "small"]
KINDS: tuple[Kind, ...] = ("regression", "diffusion")
SIZES: tuple[Size, ...] = ("full", "small")

DIFFUSION_IDENTITIES = ("Claire", "James", "Mark")


@dataclass(frozen=True)
class _Sizes:
    skin_verts: int
    tongue_verts: int
    skin_shapes: int  # regression PCA shapes
    tongue_shapes: int
    rank: int  # diffusion decoder rank
    band_channels: int
    conv_channels: tuple[int, int, int]
    hidden: int


_REGRESSION_SIZES = {
    "full": _Sizes(61520, 5602, 272, 10, 0, 32, (128, 256, 256), 512),
    "small": _Sizes(800, 60, 24, 10, 0, 16, (32, 64, 64), 128),
}
_DIFFUSION_SIZES = {
    "full": _Sizes(24002, 5602, 0, 0, 64, 32, (128, 256, 0), 0),
    "small": _Sizes(400, 50, 0, 0, 16, 16, (32, 64, 0), 0),
}

EMO_SHOTS = (("shot_neutral", 120), ("shot_joy", 90), ("shot_anger", 100))


def _progress(kind: str, msg: str, t0: float) -> None:
    logger.info("%s stand-in: %s (%.1f s)", kind, msg, time.monotonic() - t0)


# --------------------------------------------------------------------------------------
# the two kinds


def _generate_regression(out: Path, size: Size, seed: int) -> None:
    t0 = time.monotonic()
    sz = _REGRESSION_SIZES[size]
    rng = np.random.default_rng([seed, 1])
    ident = make_identity("Mark", sz.skin_verts, sz.tongue_verts)
    _progress("regression", f"mesh and poses ({sz.skin_verts} skin vertices)", t0)
    skin_n = sz.skin_verts * 3
    driven_names = ("JawOpen", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthFunnel")
    driven = np.stack([ident.skin_poses[n].reshape(-1) for n in driven_names])
    skin_basis = orthonormal_rows(driven, sz.skin_shapes, rng)
    _progress("regression", f"skin basis [{sz.skin_shapes}, {skin_n}]", t0)
    tongue_driven = np.stack(
        [ident.tongue_poses[n].reshape(-1) for n in ("tongueDown", "tongueTipDown")]
    )
    tongue_basis = orthonormal_rows(tongue_driven, sz.tongue_shapes, rng)
    skin_drive = skin_basis @ M.speech_drive(ident.skin_poses).reshape(-1).astype(np.float32)
    tongue_drive = tongue_basis @ M.tongue_drive(ident.tongue_poses).reshape(-1).astype(np.float32)
    drive = np.concatenate([skin_drive, tongue_drive, M.JAW_OPEN_MOTION, np.zeros(4, np.float32)])
    write_npz(
        out / "model_data.npz",
        {
            "shapes_matrix_skin": skin_basis,
            "shapes_mean_skin": ident.skin.flat,
            "lip_open_pose_delta": M.lip_open_delta(ident.skin_poses)
            .reshape(-1)
            .astype(np.float32),
            "eye_close_pose_delta": M.eye_close_delta(ident.skin_poses)
            .reshape(-1)
            .astype(np.float32),
            "shapes_matrix_tongue": tongue_basis,
            "shapes_mean_tongue": ident.tongue.flat,
            "neutral_jaw": ident.jaw,
            "saccade_rot_matrix": saccade(rng),
        },
    )
    _progress("regression", "model_data.npz", t0)
    names = np.array([s for s, _ in EMO_SHOTS])
    sizes = np.array([n for _, n in EMO_SHOTS], dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    emo_db = np.tanh(rng.standard_normal((int(sizes.sum()), 16)) * 0.5).astype(np.float32)
    write_npz(
        out / "implicit_emo_db.npz",
        {
            "emo_spec_names": names,
            "emo_spec_start": starts,
            "emo_spec_size": sizes,
            "emo_db": emo_db,
        },
    )
    bs = write_blendshapes(out, ident, "")
    _progress("regression", "blendshapes", t0)
    atomic_write_json(out / "model_config.json", model_config("Mark", regression=True))
    result_len = sz.skin_shapes + sz.tongue_shapes + JAW_SIZE + 4
    coef_scale = float(np.abs(skin_drive).max())
    net = RegressionNet(
        buffer_len=8320,
        emotion_len=16 + len(EMOTIONS),
        result_len=result_len,
        drive=drive,
        band_channels=sz.band_channels,
        band_kernel=128,
        conv_channels=sz.conv_channels,
        hidden=sz.hidden,
        noise_scale=0.002 * coef_scale,
    )
    model = build_regression(net, rng, SAMPLERATE)
    atomic_write_bytes(out / "network.onnx", model.SerializeToString())
    _progress("regression", "network.onnx", t0)
    atomic_write_json(
        out / "network_info.json",
        regression_network_info(sz.skin_shapes, sz.skin_verts, sz.tongue_shapes, sz.tongue_verts),
    )
    atomic_write_json(
        out / "trt_info.json",
        trt_info(
            {"input": "{B}x1x8320", "emotion": "{B}x1x26"},
            max_batch=128,
            opt_batch=10,
            build_s=60,
        ),
    )
    atomic_write_json(out / "model.json", regression_model_json(bs))
    _progress("regression", f"done: {out}", t0)


def _generate_diffusion(out: Path, size: Size, seed: int) -> None:
    t0 = time.monotonic()
    sz = _DIFFUSION_SIZES[size]
    rng = np.random.default_rng([seed, 2])
    skin_n, tongue_n = sz.skin_verts * 3, sz.tongue_verts * 3
    frame_size = skin_n + tongue_n + JAW_SIZE + 4
    idents = [make_identity(n, sz.skin_verts, sz.tongue_verts) for n in DIFFUSION_IDENTITIES]
    _progress("diffusion", f"meshes and poses ({sz.skin_verts} skin vertices x 3)", t0)
    drives = np.stack(
        [
            np.concatenate(
                [
                    M.speech_drive(i.skin_poses).reshape(-1),
                    M.tongue_drive(i.tongue_poses).reshape(-1),
                    M.JAW_OPEN_MOTION,
                    np.zeros(4),
                ]
            ).astype(np.float32)
            for i in idents
        ]
    )
    decoder = orthonormal_rows(drives, sz.rank, rng)  # [rank, frame_size]
    identity_drive = drives @ decoder.T  # [3, rank], exact: drives lie in the row span
    config_paths: list[str] = []
    data_paths: list[str] = []
    blendshapes: list[BlendshapePaths] = []
    for ident in idents:
        sfx = "_" + ident.name
        write_npz(
            out / f"model_data{sfx}.npz",
            {
                "neutral_skin": ident.skin.flat,
                "neutral_tongue": ident.tongue.flat,
                "neutral_jaw": ident.jaw,
                "lip_open_pose_delta": M.lip_open_delta(ident.skin_poses)
                .reshape(-1)
                .astype(np.float32),
                "eye_close_pose_delta": M.eye_close_delta(ident.skin_poses)
                .reshape(-1)
                .astype(np.float32),
                "saccade_rot_matrix": saccade(rng),
            },
        )
        blendshapes.append(write_blendshapes(out, ident, sfx))
        atomic_write_json(
            out / f"model_config{sfx}.json", model_config(ident.name, regression=False)
        )
        config_paths.append(f"model_config{sfx}.json")
        data_paths.append(f"model_data{sfx}.npz")
        _progress("diffusion", f"identity {ident.name}", t0)
    net = DiffusionNet(
        buffer_len=16000,
        num_identities=len(idents),
        num_emotions=len(EMOTIONS),
        center=30,
        left=15,
        right=15,
        frame_size=frame_size,
        steps=2,
        gru_layers=2,
        gru_dim=256,
        rank=sz.rank,
        decoder=decoder,
        identity_drive=identity_drive,
        band_channels=sz.band_channels,
        conv_channels=sz.conv_channels[:2],
    )
    model = build_diffusion(net, rng)
    atomic_write_bytes(out / "network.onnx", model.SerializeToString())
    _progress("diffusion", "network.onnx", t0)
    atomic_write_json(
        out / "network_info.json",
        diffusion_network_info(DIFFUSION_IDENTITIES, skin_n, tongue_n),
    )
    atomic_write_json(
        out / "trt_info.json",
        trt_info(
            {
                "window": "{B}x16000",
                "identity": "{B}x3",
                "emotion": "{B}x30x10",
                "input_latents": "2x2x{B}x256",
                "noise": f"{{B}}x3x60x{frame_size}",
            },
            max_batch=8,
            opt_batch=3,
            build_s=150,
        ),
    )
    atomic_write_json(
        out / "model.json",
        diffusion_model_json(config_paths, data_paths, blendshapes),
    )
    _progress("diffusion", f"done: {out}", t0)


def generate(
    kind: str, out_dir: str | os.PathLike[str], size: str = "small", seed: int = 0
) -> Path:
    """Write a complete stand-in model folder of ``kind`` into ``out_dir`` and return it.

    ``size="full"`` uses the published sizes; ``"small"`` the same structure with few
    vertices and shapes. Output is byte-identical for the same kind, size and seed. Every
    file goes through a temporary name and an atomic rename; ``model.json`` comes last.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} unknown; expected one of {', '.join(KINDS)}")
    if size not in SIZES:
        raise ValueError(f"size {size!r} unknown; expected one of {', '.join(SIZES)}")
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "regression":
        _generate_regression(out, "full" if size == "full" else "small", seed)
    else:
        _generate_diffusion(out, "full" if size == "full" else "small", seed)
    return out
