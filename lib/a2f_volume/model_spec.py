"""What an Audio2Face-3D model folder holds once loaded: canonical name lists, the interface
of its ONNX, and the immutable :class:`ModelFolder` with its parts (see
:mod:`a2f_volume.model_folder` for loading)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from a2f_volume.errors import NotFoundError

logger = logging.getLogger(__name__)

ModelKind = Literal["regression", "diffusion"]

#: The 52 ARKit skin blendshapes in the order the NIM emits them.
ARKIT_SKIN_NAMES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft",
    "EyeSquintLeft", "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight",
    "EyeLookOutRight", "EyeLookUpRight", "EyeSquintRight", "EyeWideRight", "JawForward",
    "JawLeft", "JawRight", "JawOpen", "MouthClose", "MouthFunnel", "MouthPucker", "MouthLeft",
    "MouthRight", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight",
    "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft",
    "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft",
    "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft",
    "NoseSneerRight", "TongueOut",
)  # fmt: skip


#: Largest array an npz of a model folder may declare (checked before its data is read).
NPZ_MAX_ARRAY_BYTES = 1 << 30


def npz_pose_key(name: str) -> str:
    """The lowerCamel key a pose name has in ``bs_*.npz`` (``JawOpen`` -> ``jawOpen``)."""
    return name[:1].lower() + name[1:]


#: lowerCamel npz keys of :data:`ARKIT_SKIN_NAMES`, same order.
ARKIT_SKIN_NPZ_KEYS: tuple[str, ...] = tuple(npz_pose_key(n) for n in ARKIT_SKIN_NAMES)

#: The 16 tongue poses (npz keys; the NIM emits them capitalised after the 52 skin names).
TONGUE_NAMES: tuple[str, ...] = (
    "tongueTipUp", "tongueTipDown", "tongueTipLeft", "tongueTipRight", "tongueRollUp",
    "tongueRollDown", "tongueRollLeft", "tongueRollRight", "tongueUp", "tongueDown",
    "tongueLeft", "tongueRight", "tongueIn", "tongueStretch", "tongueWide", "tongueNarrow",
)  # fmt: skip

#: Capitalised tongue names as the NIM emits them.
TONGUE_OUTPUT_NAMES: tuple[str, ...] = tuple(n[:1].upper() + n[1:] for n in TONGUE_NAMES)

#: The 10 explicit emotions in A2F order.
EMOTIONS: tuple[str, ...] = (
    "amazement", "anger", "cheekiness", "disgust", "fear", "grief", "joy", "outofbreath",
    "pain", "sadness",
)  # fmt: skip

#: model_config "config" keys every identity must define (``blink_offset`` defaults to 0).
MODEL_CONFIG_KEYS: tuple[str, ...] = (
    "input_strength", "upper_face_smoothing", "lower_face_smoothing", "upper_face_strength",
    "lower_face_strength", "face_mask_level", "face_mask_softness", "skin_strength",
    "blink_strength", "eyelid_open_offset", "lip_open_offset", "tongue_strength",
    "tongue_height_offset", "tongue_depth_offset", "lower_teeth_strength",
    "lower_teeth_height_offset", "lower_teeth_depth_offset", "eyeballs_strength",
    "saccade_strength", "right_eye_rot_x_offset", "right_eye_rot_y_offset",
    "left_eye_rot_x_offset", "left_eye_rot_y_offset", "eye_saccade_seed",
)  # fmt: skip
REGRESSION_CONFIG_KEYS: tuple[str, ...] = ("source_shot", "source_frame")

REGRESSION_DATA_KEYS: tuple[str, ...] = (
    "shapes_matrix_skin", "shapes_mean_skin", "lip_open_pose_delta", "eye_close_pose_delta",
    "shapes_matrix_tongue", "shapes_mean_tongue", "neutral_jaw", "saccade_rot_matrix",
)  # fmt: skip
DIFFUSION_DATA_KEYS: tuple[str, ...] = (
    "neutral_skin", "neutral_tongue", "neutral_jaw", "lip_open_pose_delta",
    "eye_close_pose_delta", "saccade_rot_matrix",
)  # fmt: skip

#: ONNX graph interface per model kind: tensor name -> rank (inputs, outputs).
ONNX_INPUTS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "regression": MappingProxyType({"input": 3, "emotion": 3}),
        "diffusion": MappingProxyType(
            {"window": 2, "identity": 2, "emotion": 3, "input_latents": 4, "noise": 4}
        ),
    }
)
ONNX_OUTPUTS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "regression": MappingProxyType({"result": 3}),
        "diffusion": MappingProxyType({"prediction": 3, "output_latents": 4}),
    }
)

JAW_SIZE = 15  # 5 anchor points x 3; fixed by the post-processing
EYES_SIZE = 4  # rX, rY, lX, lY
SACCADE_LEN = 5000

# Defaults of bs_*_config.json when a value (or the whole file) is absent.
BLENDSHAPE_PARAM_DEFAULTS = {
    "strengthL1regularization": 1.0,
    "strengthL2regularization": 3.5,
    "strengthTemporalSmoothing": 0.0,
    "strengthSymmetry": 100.0,
    "templateBBSize": 54.7,
}


@dataclass(frozen=True)
class AudioParams:
    """``audio_params`` of network_info.json, in samples."""

    samplerate: int
    buffer_len: int
    buffer_ofs: int  # regression: window starts buffer_ofs before the frame; diffusion: 0
    padding_left: int  # diffusion only, else 0
    padding_right: int  # diffusion only, else 0


@dataclass(frozen=True)
class BlendshapeParams:
    """``bs_*_config.json`` ``blendshape_params`` over P poses (neutral excluded)."""

    l1: float
    l2: float
    temporal: float
    symmetry: float
    template_bb_size: float
    active: np.ndarray  # bool [P]
    cancel_pairs: np.ndarray  # int64 [P], pair id or -1
    symmetry_pairs: np.ndarray  # int64 [P], pair id or -1
    multipliers: np.ndarray  # float32 [P]
    offsets: np.ndarray  # float32 [P]


@dataclass(frozen=True)
class BlendshapeSet:
    """One ``bs_*.npz`` (skin or tongue) with its solve parameters."""

    pose_names: tuple[str, ...]  # P names, "neutral" excluded, npz order
    neutral: np.ndarray  # float32 [N*3], absolute positions
    deltas: np.ndarray  # float32 [P, N*3]
    frontal_mask: np.ndarray | None  # int64 vertex indices, or None (all vertices)
    params: BlendshapeParams


@dataclass(frozen=True)
class Identity:
    """One actor: its neutral geometry, post-processing config and blendshape sets.

    ``config`` holds the numeric ``model_config`` values with the file's snake_case keys
    (``blink_offset`` added as 0.0 when absent). A non-numeric ``source_shot`` (a shot name
    of the implicit emotion database) is kept in ``source_shot``.
    """

    name: str
    config: Mapping[str, float]
    skin_neutral: np.ndarray  # float32 [V*3]
    tongue_neutral: np.ndarray  # float32 [T*3]
    jaw_neutral: np.ndarray  # float32 [15]
    lip_open_delta: np.ndarray  # float32 [V*3]
    eye_close_delta: np.ndarray  # float32 [V*3]
    saccade: np.ndarray  # float32 [5000, 2]
    skin_pca: np.ndarray | None  # float32 [S, V*3] (regression), else None
    tongue_pca: np.ndarray | None  # float32 [10, T*3] (regression), else None
    skin: BlendshapeSet
    tongue: BlendshapeSet
    source_shot: str | None = None


@dataclass(frozen=True)
class RegressionSpec:
    """Network sizes of a regression model (one frame per inference)."""

    implicit_emotion_len: int
    implicit_emotion: np.ndarray  # float32 [implicit_emotion_len], emo_db row
    num_shapes_skin: int
    num_verts_skin: int
    num_shapes_tongue: int
    num_verts_tongue: int
    result_jaw_size: int
    result_eyes_size: int

    @property
    def result_size(self) -> int:
        """Length of the ``result`` output row (skin + tongue coefficients, jaw, eyes)."""
        return (
            self.num_shapes_skin
            + self.num_shapes_tongue
            + self.result_jaw_size
            + self.result_eyes_size
        )

    @property
    def emotion_size(self) -> int:
        """Length of the ``emotion`` input row (implicit then 10 explicit values)."""
        return self.implicit_emotion_len + len(EMOTIONS)


@dataclass(frozen=True)
class DiffusionSpec:
    """Network sizes of a diffusion model (30 valid frames per inference at 60 fps)."""

    skin_size: int  # values (vertices x 3)
    tongue_size: int
    jaw_size: int
    eyes_size: int
    num_diffusion_steps: int
    num_gru_layers: int
    gru_latent_dim: int
    left_truncate: int
    right_truncate: int
    center: int

    @property
    def frame_size(self) -> int:
        """Values per predicted frame (skin + tongue + jaw + eyes)."""
        return self.skin_size + self.tongue_size + self.jaw_size + self.eyes_size

    @property
    def num_frames(self) -> int:
        """Frames per prediction (left + center + right)."""
        return self.left_truncate + self.center + self.right_truncate


@dataclass(frozen=True)
class ModelFolder:
    """A fully cross-checked model folder."""

    path: Path
    name: str
    kind: ModelKind
    network_info: Mapping[str, Any]
    trt_info: Mapping[str, Any]
    onnx_path: Path
    network_path: Path  # engine path named by model.json (network.trt)
    emotions: tuple[str, ...]
    default_emotion: np.ndarray  # float32 [len(emotions)]
    identities: tuple[Identity, ...]
    audio: AudioParams
    regression: RegressionSpec | None
    diffusion: DiffusionSpec | None
    max_batch: int
    opt_batch: int

    @property
    def identity_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.identities)

    def identity(self, name: str | None) -> Identity:
        """The identity called ``name`` (case-insensitive); ``None`` gives the first one."""
        if name is None:
            return self.identities[0]
        for ident in self.identities:
            if ident.name == name:
                return ident
        for ident in self.identities:
            if ident.name.lower() == name.lower():
                return ident
        raise NotFoundError(
            f"identity {name!r} not in model {self.name!r}; "
            f"available: {', '.join(self.identity_names)}"
        )
