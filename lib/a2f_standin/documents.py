"""The JSON documents of a stand-in folder, as plain dicts in NVIDIA's layout.

Each function returns the whole document of one file (``model.json``,
``network_info.json``, ``model_config*.json``, ``bs_*_config.json``, ``trt_info.json``);
writing them is the generator's job. ``network_info.json`` carries ``audio_params`` at the
top level, beside ``id`` and ``params``, as NVIDIA's published folders do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from a2f_volume.model_folder import EMOTIONS, JAW_SIZE

SAMPLERATE = 16000

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
IDENTITY_TWEAKS: dict[str, dict[str, float]] = {
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
#: Skin poses with a Left/Right twin (ARKit spelling, without the side).
SKIN_SYMMETRIC = (
    "EyeBlink", "EyeLookDown", "EyeLookUp", "EyeSquint", "EyeWide", "MouthSmile", "MouthFrown",
    "MouthDimple", "MouthStretch", "MouthPress", "MouthLowerDown", "MouthUpperUp", "BrowDown",
    "BrowOuterUp", "CheekSquint", "NoseSneer",
)  # fmt: skip
#: Skin pose pairs that cancel each other (ARKit spelling).
SKIN_CANCEL = (
    ("JawLeft", "JawRight"),
    ("MouthLeft", "MouthRight"),
    ("MouthSmileLeft", "MouthFrownLeft"),
    ("MouthSmileRight", "MouthFrownRight"),
)
TONGUE_CANCEL = (
    ("tongueTipUp", "tongueTipDown"), ("tongueTipLeft", "tongueTipRight"),
    ("tongueRollUp", "tongueRollDown"), ("tongueRollLeft", "tongueRollRight"),
    ("tongueUp", "tongueDown"), ("tongueLeft", "tongueRight"), ("tongueWide", "tongueNarrow"),
)  # fmt: skip

SOURCE_SHOT, SOURCE_FRAME = "shot_neutral", 30


def _pairs(names: tuple[str, ...], groups: Sequence[tuple[str, str]]) -> list[int]:
    out = [-1] * len(names)
    for pid, (a, b) in enumerate(groups):
        out[names.index(a)] = pid
        out[names.index(b)] = pid
    return out


def bs_config(
    names: tuple[str, ...],
    scalars: Mapping[str, float],
    symmetric: Sequence[tuple[str, str]],
    cancel: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """``bs_*_config.json``: solve parameters and one entry per pose in ``names``."""
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


def model_config(name: str, regression: bool) -> dict[str, Any]:
    """``model_config*.json`` of identity ``name`` (regression adds the emotion source)."""
    cfg: dict[str, Any] = {**MARK_CONFIG, **IDENTITY_TWEAKS[name]}
    if regression:
        cfg["source_shot"] = SOURCE_SHOT
        cfg["source_frame"] = SOURCE_FRAME
    return {"config": cfg}


def trt_info(
    groups: Mapping[str, str], max_batch: int, opt_batch: int, build_s: int
) -> dict[str, Any]:
    """``trt_info.json``: one shape per input (``{B}`` = batch) for min/max/opt profiles."""

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


def regression_network_info(
    skin_shapes: int, skin_verts: int, tongue_shapes: int, tongue_verts: int
) -> dict[str, Any]:
    """``network_info.json`` of the regression stand-in (Mark v2.3)."""
    return {
        "id": {"type": "regression", "actor": "mark", "version": "2.3", "output": "geometry"},
        "params": {
            "implicit_emotion_len": 16,
            "explicit_emotions": list(EMOTIONS),
            "default_emotion": [0.0] * len(EMOTIONS),
            "num_shapes_skin": skin_shapes,
            "num_verts_skin": skin_verts,
            "num_shapes_tongue": tongue_shapes,
            "num_verts_tongue": tongue_verts,
            "result_jaw_size": JAW_SIZE,
            "result_eyes_size": 4,
        },
        "audio_params": {"buffer_len": 8320, "buffer_ofs": 4160, "samplerate": SAMPLERATE},
    }


def diffusion_network_info(
    identities: Sequence[str], skin_size: int, tongue_size: int
) -> dict[str, Any]:
    """``network_info.json`` of the multi-identity diffusion stand-in (v3.0)."""
    return {
        "id": {"type": "diffusion", "actor": "multi", "version": "3.0", "output": "geometry"},
        "params": {
            "emotions": list(EMOTIONS),
            "default_emotion": [0.0] * len(EMOTIONS),
            "identities": list(identities),
            "skin_size": skin_size,
            "tongue_size": tongue_size,
            "jaw_size": JAW_SIZE,
            "eyes_size": 4,
            "num_diffusion_steps": 2,
            "num_gru_layers": 2,
            "gru_latent_dim": 256,
            "num_frames_left_truncate": 15,
            "num_frames_right_truncate": 15,
            "num_frames_center": 30,
        },
        "audio_params": {
            "buffer_len": 16000,
            "padding_left": 16000,
            "padding_right": 16000,
            "samplerate": SAMPLERATE,
        },
    }


def regression_model_json(blendshapes: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """``model.json`` of the regression stand-in (file names of the folder)."""
    return {
        "networkInfoPath": "network_info.json",
        "networkPath": "network.trt",
        "emotionDatabasePath": "implicit_emo_db.npz",
        "modelConfigPath": "model_config.json",
        "modelDataPath": "model_data.npz",
        "blendshapePaths": blendshapes,
    }


def diffusion_model_json(
    config_paths: Sequence[str],
    data_paths: Sequence[str],
    blendshapes: Sequence[Mapping[str, Mapping[str, str]]],
) -> dict[str, Any]:
    """``model.json`` of the diffusion stand-in (per-identity lists in identity order)."""
    return {
        "networkInfoPath": "network_info.json",
        "networkPath": "network.trt",
        "modelConfigPaths": list(config_paths),
        "modelDataPaths": list(data_paths),
        "blendshapePaths": list(blendshapes),
    }
