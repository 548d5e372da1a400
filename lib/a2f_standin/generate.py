"""Write complete stand-in model folders (regression or diffusion) in NVIDIA's layout."""

from __future__ import annotations

import io
import logging
import os
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from a2f_standin import mesh as M
from a2f_standin.networks import (
    DiffusionNet,
    RegressionNet,
    build_diffusion,
    build_regression,
)
from a2f_volume.model_folder import (
    ARKIT_SKIN_NAMES,
    EMOTIONS,
    JAW_SIZE,
    SACCADE_LEN,
    TONGUE_NAMES,
    npz_pose_key,
)
from a2f_volume.publish import atomic_write_bytes, atomic_write_json, atomic_writer

logger = logging.getLogger(__name__)

#: Bumped whenever generated content changes (keys caches of generated folders).
GENERATOR_VERSION = 1

Kind = Literal["regression", "diffusion"]
Size = Literal["full", "small"]
KINDS: tuple[Kind, ...] = ("regression", "diffusion")
SIZES: tuple[Size, ...] = ("full", "small")

SAMPLERATE = 16000
DIFFUSION_IDENTITIES = ("Claire", "James", "Mark")
_IDENTITY_SCALES = {
    "Claire": (0.93, 0.95, 0.94),
    "James": (1.03, 1.01, 1.0),
    "Mark": (1.0, 1.03, 1.02),
}


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

# Mark's published post-processing values (regression adds the implicit-emotion source).
MARK_CONFIG: dict[str, float] = {
    "input_strength": 1.3, "upper_face_smoothing": 0.001, "lower_face_smoothing": 0.0023,
    "upper_face_strength": 1.0, "lower_face_strength": 1.4, "face_mask_level": 0.6,
    "face_mask_softness": 0.0085, "skin_strength": 1.1, "blink_strength": 1.0,
    "eyelid_open_offset": 0.06, "lip_open_offset": -0.03, "tongue_strength": 1.5,
    "tongue_height_offset": 0.2, "tongue_depth_offset": 0.13, "lower_teeth_strength": 1.3,
    "lower_teeth_height_offset": -0.1, "lower_teeth_depth_offset": 0.0,
    "eyeballs_strength": 1.0, "saccade_strength": 0.9, "right_eye_rot_x_offset": 0.0,
    "right_eye_rot_y_offset": -2.0, "left_eye_rot_x_offset": 0.0, "left_eye_rot_y_offset": 2.0,
    "eye_saccade_seed": 0,
}  # fmt: skip
_IDENTITY_TWEAKS: dict[str, dict[str, float]] = {
    "Claire": {"input_strength": 1.0, "skin_strength": 1.0, "lower_face_strength": 1.2},
    "James": {"input_strength": 1.1, "lower_face_strength": 1.3},
    "Mark": {},
}
SKIN_BS_PARAMS = {
    "strengthL1regularization": 0.5, "strengthL2regularization": 0.5,
    "strengthSymmetry": 100.0, "strengthTemporalSmoothing": 0.3, "templateBBSize": 53.4505,
}  # fmt: skip
TONGUE_BS_PARAMS = {
    "strengthL1regularization": 1.0, "strengthL2regularization": 3.5,
    "strengthSymmetry": 100.0, "strengthTemporalSmoothing": 5.0, "templateBBSize": 7.9359,
}  # fmt: skip
_SKIN_SYMMETRIC = (
    "EyeBlink", "EyeLookDown", "EyeLookUp", "EyeSquint", "EyeWide", "MouthSmile", "MouthFrown",
    "MouthDimple", "MouthStretch", "MouthPress", "MouthLowerDown", "MouthUpperUp", "BrowDown",
    "BrowOuterUp", "CheekSquint", "NoseSneer",
)  # fmt: skip
_SKIN_CANCEL = (
    ("JawLeft", "JawRight"),
    ("MouthLeft", "MouthRight"),
    ("MouthSmileLeft", "MouthFrownLeft"),
    ("MouthSmileRight", "MouthFrownRight"),
)
_TONGUE_CANCEL = (
    ("tongueTipUp", "tongueTipDown"), ("tongueTipLeft", "tongueTipRight"),
    ("tongueRollUp", "tongueRollDown"), ("tongueRollLeft", "tongueRollRight"),
    ("tongueUp", "tongueDown"), ("tongueLeft", "tongueRight"), ("tongueWide", "tongueNarrow"),
)  # fmt: skip

EMO_SHOTS = (("shot_neutral", 120), ("shot_joy", 90), ("shot_anger", 100))
SOURCE_SHOT, SOURCE_FRAME = "shot_neutral", 30


# --------------------------------------------------------------------------------------
# deterministic writers


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed .npz with fixed zip timestamps (byte-identical for same data)."""
    with atomic_writer(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(info, buf.getbuffer(), compress_type=zipfile.ZIP_STORED)


def _json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def _orthonormal_rows(driven: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """[total, n]: rows spanning ``driven`` first (Gram-Schmidt order), random orthogonal fill."""
    k = driven.shape[0]
    fill = rng.standard_normal((total - k, driven.shape[1])).astype(np.float32)
    a = np.concatenate([driven.astype(np.float32), fill]).T  # [n, total]
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))[None, :]  # unique: positive projection on each driven vector
    return np.ascontiguousarray(q.T, dtype=np.float32)


def _pairs(names: tuple[str, ...], groups: list[tuple[str, str]]) -> list[int]:
    out = [-1] * len(names)
    for pid, (a, b) in enumerate(groups):
        out[names.index(a)] = pid
        out[names.index(b)] = pid
    return out


def _bs_config(
    names: tuple[str, ...],
    scalars: Mapping[str, float],
    symmetric: list[tuple[str, str]],
    cancel: list[tuple[str, str]],
) -> dict[str, Any]:
    n = len(names)
    return {
        "blendshape_params": {
            **scalars,
            "numPoses": n,
            "bsSolveActivePoses": [1] * n,
            "bsSolveCancelPoses": _pairs(names, cancel),
            "bsSolveSymmetryPoses": _pairs(names, symmetric),
            "bsWeightMultipliers": [1.0] * n,
            "bsWeightOffsets": [0.0] * n,
        }
    }


@dataclass
class _Identity:
    name: str
    skin: M.Mesh
    tongue: M.Mesh
    skin_poses: dict[str, np.ndarray]
    tongue_poses: dict[str, np.ndarray]
    jaw: np.ndarray


def _make_identity(name: str, sizes: _Sizes) -> _Identity:
    scale = _IDENTITY_SCALES[name]
    skin = M.head_mesh(sizes.skin_verts, scale)
    tongue = M.tongue_mesh(sizes.tongue_verts, scale)
    return _Identity(
        name,
        skin,
        tongue,
        M.skin_pose_deltas(skin),
        M.tongue_pose_deltas(tongue),
        M.jaw_anchors(scale),
    )


def _write_blendshapes(out: Path, ident: _Identity, suffix: str) -> dict[str, dict[str, str]]:
    skin_keys = tuple(npz_pose_key(n) for n in ARKIT_SKIN_NAMES)
    skin_arrays: dict[str, np.ndarray] = {
        "poseNames": np.array(("neutral", *skin_keys)),
        "neutral": ident.skin.flat,
        "frontalMask": M.frontal_mask(ident.skin),
    }
    for name, key in zip(ARKIT_SKIN_NAMES, skin_keys, strict=True):
        skin_arrays[key] = ident.skin_poses[name].reshape(-1).astype(np.float32)
    tongue_arrays: dict[str, np.ndarray] = {
        "poseNames": np.array(("neutral", *TONGUE_NAMES)),
        "neutral": ident.tongue.flat,
    }
    for name in TONGUE_NAMES:
        tongue_arrays[name] = ident.tongue_poses[name].reshape(-1).astype(np.float32)
    write_npz(out / f"bs_skin{suffix}.npz", skin_arrays)
    write_npz(out / f"bs_tongue{suffix}.npz", tongue_arrays)
    sym = [(b + "Left", b + "Right") for b in M_SKIN_SYMMETRIC]
    _json(
        out / f"bs_skin_config{suffix}.json",
        _bs_config(
            skin_keys,
            SKIN_BS_PARAMS,
            sym,
            [(npz_pose_key(a), npz_pose_key(b)) for a, b in _SKIN_CANCEL],
        ),
    )
    _json(
        out / f"bs_tongue_config{suffix}.json",
        _bs_config(TONGUE_NAMES, TONGUE_BS_PARAMS, [], list(_TONGUE_CANCEL)),
    )
    return {
        "skin": {"config": f"bs_skin_config{suffix}.json", "data": f"bs_skin{suffix}.npz"},
        "tongue": {"config": f"bs_tongue_config{suffix}.json", "data": f"bs_tongue{suffix}.npz"},
    }


M_SKIN_SYMMETRIC = tuple(npz_pose_key(b) for b in _SKIN_SYMMETRIC)


def _saccade(rng: np.random.Generator) -> np.ndarray:
    """Small eye jitter in degrees, [5000 * 2] (x, y per entry)."""
    steps = rng.standard_normal((SACCADE_LEN, 2)) * 0.15
    walk = np.cumsum(steps, axis=0)
    walk -= np.linspace(walk[0], walk[-1], SACCADE_LEN)  # loops back to the start
    return np.clip(walk, -3.0, 3.0).reshape(-1).astype(np.float32)


def _config(name: str, regression: bool) -> dict[str, Any]:
    cfg: dict[str, Any] = {**MARK_CONFIG, **_IDENTITY_TWEAKS[name]}
    if regression:
        cfg["source_shot"] = SOURCE_SHOT
        cfg["source_frame"] = SOURCE_FRAME
    return {"config": cfg}


def _trt_info(
    groups: dict[str, str], max_batch: int, opt_batch: int, build_s: int
) -> dict[str, Any]:
    def shapes(flag: str, batch: str) -> str:
        return flag + ",".join(f"{k}:{v.format(B=batch)}" for k, v in groups.items())

    return {
        "trt_build_param": {
            "cuda_in_graphics": ["--memPoolSize=tacticSharedMem:0.046875"],
            "batch": [
                shapes("--minShapes=", "1"),
                shapes("--maxShapes=", "{MAX_BATCH_SIZE}"),
                shapes("--optShapes=", "{OPT_BATCH_SIZE}"),
            ],
        },
        "defaults": {"MAX_BATCH_SIZE": max_batch, "OPT_BATCH_SIZE": opt_batch},
        "estimated_build_time_s": build_s,
    }


def _progress(kind: str, msg: str, t0: float) -> None:
    logger.info("%s stand-in: %s (%.1f s)", kind, msg, time.monotonic() - t0)


# --------------------------------------------------------------------------------------
# the two kinds


def _generate_regression(out: Path, size: Size, seed: int) -> None:
    t0 = time.monotonic()
    sz = _REGRESSION_SIZES[size]
    rng = np.random.default_rng([seed, 1])
    ident = _make_identity("Mark", sz)
    _progress("regression", f"mesh and poses ({sz.skin_verts} skin vertices)", t0)
    skin_n = sz.skin_verts * 3
    driven_names = ("JawOpen", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthFunnel")
    driven = np.stack([ident.skin_poses[n].reshape(-1) for n in driven_names])
    skin_basis = _orthonormal_rows(driven, sz.skin_shapes, rng)
    _progress("regression", f"skin basis [{sz.skin_shapes}, {skin_n}]", t0)
    tongue_driven = np.stack(
        [ident.tongue_poses[n].reshape(-1) for n in ("tongueDown", "tongueTipDown")]
    )
    tongue_basis = _orthonormal_rows(tongue_driven, sz.tongue_shapes, rng)
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
            "saccade_rot_matrix": _saccade(rng),
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
    bs = _write_blendshapes(out, ident, "")
    _progress("regression", "blendshapes", t0)
    _json(out / "model_config.json", _config("Mark", regression=True))
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
    _json(
        out / "network_info.json",
        {
            "id": {"type": "regression", "actor": "mark", "version": "2.3", "output": "geometry"},
            "params": {
                "implicit_emotion_len": 16,
                "explicit_emotions": list(EMOTIONS),
                "default_emotion": [0.0] * len(EMOTIONS),
                "num_shapes_skin": sz.skin_shapes,
                "num_verts_skin": sz.skin_verts,
                "num_shapes_tongue": sz.tongue_shapes,
                "num_verts_tongue": sz.tongue_verts,
                "result_jaw_size": JAW_SIZE,
                "result_eyes_size": 4,
                "audio_params": {"buffer_len": 8320, "buffer_ofs": 4160, "samplerate": SAMPLERATE},
            },
        },
    )
    _json(
        out / "trt_info.json",
        _trt_info(
            {"input": "{B}x1x8320", "emotion": "{B}x1x26"},
            max_batch=128,
            opt_batch=10,
            build_s=60,
        ),
    )
    _json(
        out / "model.json",
        {
            "networkInfoPath": "network_info.json",
            "networkPath": "network.trt",
            "emotionDatabasePath": "implicit_emo_db.npz",
            "modelConfigPath": "model_config.json",
            "modelDataPath": "model_data.npz",
            "blendshapePaths": bs,
        },
    )
    _progress("regression", f"done: {out}", t0)


def _generate_diffusion(out: Path, size: Size, seed: int) -> None:
    t0 = time.monotonic()
    sz = _DIFFUSION_SIZES[size]
    rng = np.random.default_rng([seed, 2])
    skin_n, tongue_n = sz.skin_verts * 3, sz.tongue_verts * 3
    frame_size = skin_n + tongue_n + JAW_SIZE + 4
    idents = [_make_identity(n, sz) for n in DIFFUSION_IDENTITIES]
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
    decoder = _orthonormal_rows(drives, sz.rank, rng)  # [rank, frame_size]
    identity_drive = drives @ decoder.T  # [3, rank], exact: drives lie in the row span
    lists: dict[str, list[Any]] = {
        "modelConfigPaths": [],
        "modelDataPaths": [],
        "blendshapePaths": [],
    }
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
                "saccade_rot_matrix": _saccade(rng),
            },
        )
        lists["blendshapePaths"].append(_write_blendshapes(out, ident, sfx))
        _json(out / f"model_config{sfx}.json", _config(ident.name, regression=False))
        lists["modelConfigPaths"].append(f"model_config{sfx}.json")
        lists["modelDataPaths"].append(f"model_data{sfx}.npz")
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
    _json(
        out / "network_info.json",
        {
            "id": {"type": "diffusion", "actor": "multi", "version": "3.0", "output": "geometry"},
            "params": {
                "emotions": list(EMOTIONS),
                "default_emotion": [0.0] * len(EMOTIONS),
                "identities": list(DIFFUSION_IDENTITIES),
                "skin_size": skin_n,
                "tongue_size": tongue_n,
                "jaw_size": JAW_SIZE,
                "eyes_size": 4,
                "num_diffusion_steps": 2,
                "num_gru_layers": 2,
                "gru_latent_dim": 256,
                "num_frames_left_truncate": 15,
                "num_frames_right_truncate": 15,
                "num_frames_center": 30,
                "audio_params": {
                    "buffer_len": 16000,
                    "padding_left": 16000,
                    "padding_right": 16000,
                    "samplerate": SAMPLERATE,
                },
            },
        },
    )
    _json(
        out / "trt_info.json",
        _trt_info(
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
    _json(
        out / "model.json",
        {
            "networkInfoPath": "network_info.json",
            "networkPath": "network.trt",
            **lists,
        },
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
