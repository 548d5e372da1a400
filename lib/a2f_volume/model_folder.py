"""Parsing and cross-checking an Audio2Face-3D model folder (regression and diffusion).

:func:`load_model_folder` reads ``model.json`` and every file it names, checks every
cross-reference (sizes against ``network_info.json``, list lengths against the identities,
pose names against ``numPoses`` and the canonical name lists, pair arrays, the ONNX graph's
tensor names and ranks) and returns an immutable :class:`ModelFolder`. Any inconsistency
raises :class:`a2f_volume.errors.ModelFolderError` naming the file, the field, what was found
and what was expected. Sizes always come from the folder's own JSON, never from constants, so
stand-in folders and NVIDIA's published folders load through the same code.

Arrays are loaded once with ``np.load`` as float32 (the full-size regression skin basis is
272 x 184560 float32 = 200 MB); treat them as read-only.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from a2f_volume.errors import ModelFolderError, NotFoundError

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
_BS_DEFAULTS = {
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


# --------------------------------------------------------------------------------------
# loading helpers


class _Ctx:
    """The folder being loaded, to name files relative to it in errors."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def fail(self, file: Path | str, field: str, found: object, expected: str) -> ModelFolderError:
        return ModelFolderError(str(file), field, found, expected)

    def resolve(self, src: Path, field: str, rel: object) -> Path:
        if not isinstance(rel, str) or not rel:
            raise self.fail(src, field, rel, "a relative file path (string)")
        p = (self.folder / rel).resolve()
        root = self.folder.resolve()
        if p != root and root not in p.parents:
            raise self.fail(src, field, rel, "a path inside the model folder")
        return self.folder / rel

    def json(self, path: Path, referrer: Path | None = None, field: str = "") -> Any:
        if not path.is_file():
            raise self.fail(
                referrer or path,
                field or "<file>",
                "missing file " + str(path),
                "an existing JSON file",
            )
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise self.fail(path, "<document>", f"malformed JSON ({err})", "valid JSON") from err

    def npz(self, path: Path, referrer: Path, field: str) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise self.fail(referrer, field, "missing file " + str(path), "an existing .npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            raise self.fail(path, "<archive>", f"unreadable npz ({err})", "a numpy .npz") from err


def _get(ctx: _Ctx, src: Path, obj: Any, key: str, where: str = "") -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise ctx.fail(src, where + key, "absent", "a value")
    return obj[key]


def _param(ctx: _Ctx, src: Path, info: Mapping[str, Any], key: str) -> Any:
    """A network_info value, under ``params`` or at the top level."""
    params = info.get("params")
    if isinstance(params, Mapping) and key in params:
        return params[key]
    if key in info:
        return info[key]
    raise ctx.fail(src, "params." + key, "absent", "a value")


def _int(ctx: _Ctx, src: Path, field: str, v: Any, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < minimum:
        raise ctx.fail(src, field, v, f"an integer >= {minimum}")
    return int(v)


def _num(ctx: _Ctx, src: Path, field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        raise ctx.fail(src, field, v, "a finite number")
    return float(v)


def _array(
    ctx: _Ctx,
    src: Path,
    arrays: Mapping[str, np.ndarray],
    key: str,
    size: int | None,
    *,
    field_prefix: str = "",
) -> np.ndarray:
    """A flat float32 array from an npz, of ``size`` values when given."""
    if key not in arrays:
        raise ctx.fail(src, field_prefix + key, "absent", "an array")
    a = arrays[key]
    if a.dtype.kind not in "fiu":
        raise ctx.fail(src, field_prefix + key, f"dtype {a.dtype}", "a numeric array")
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    if size is not None and a.size != size:
        raise ctx.fail(src, field_prefix + key, f"{a.size} values", f"{size} values")
    return a


def _matrix(
    ctx: _Ctx, src: Path, arrays: Mapping[str, np.ndarray], key: str, rows: int, cols: int
) -> np.ndarray:
    if key not in arrays:
        raise ctx.fail(src, key, "absent", "an array")
    a = arrays[key]
    if a.ndim == 1 and a.size == rows * cols:
        a = a.reshape(rows, cols)
    if a.shape != (rows, cols):
        raise ctx.fail(src, key, f"shape {list(a.shape)}", f"shape [{rows}, {cols}]")
    return np.asarray(a, dtype=np.float32)


def _exact_keys(
    ctx: _Ctx, src: Path, arrays: Mapping[str, np.ndarray], keys: Sequence[str]
) -> None:
    found = sorted(arrays)
    if set(found) != set(keys):
        raise ctx.fail(src, "<arrays>", found, f"exactly {sorted(keys)}")


# --------------------------------------------------------------------------------------
# blendshapes


def _pair_array(ctx: _Ctx, src: Path, field: str, v: Any, n: int) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n:
        raise ctx.fail(src, field, _short(v), f"a list of {n} integers (-1 = none)")
    a = np.array([_int(ctx, src, f"{field}[{i}]", x, minimum=-1) for i, x in enumerate(v)])
    a = a.astype(np.int64)
    ids, counts = np.unique(a[a >= 0], return_counts=True)
    bad = ids[counts != 2]
    if bad.size:
        raise ctx.fail(
            src,
            field,
            f"pair id {int(bad[0])} appearing {int(counts[counts != 2][0])} time(s)",
            "every non-negative id exactly twice",
        )
    return a


def _short(v: Any) -> Any:
    if isinstance(v, list) and len(v) > 8:
        return f"list of {len(v)}"
    return v


def _blendshape_params(ctx: _Ctx, src: Path | None, n: int) -> BlendshapeParams:
    if src is None:
        bp: Mapping[str, Any] = {}
        cfg_src = Path("<defaults>")
    else:
        cfg_src = src
        doc = ctx.json(src)
        bp = _get(ctx, src, doc, "blendshape_params")
        if not isinstance(bp, Mapping):
            raise ctx.fail(src, "blendshape_params", _short(bp), "an object")
        if "numPoses" in bp:
            num = _int(ctx, src, "blendshape_params.numPoses", bp["numPoses"])
            if num != n:
                raise ctx.fail(
                    src,
                    "blendshape_params.numPoses",
                    num,
                    f"{n} (poses in the blendshape npz, neutral excluded)",
                )

    def scalar(key: str) -> float:
        return _num(ctx, cfg_src, "blendshape_params." + key, bp.get(key, _BS_DEFAULTS[key]))

    def vector(key: str, default: list[Any], kind: str) -> list[Any]:
        v = bp.get(key, default)
        if not isinstance(v, list) or len(v) != n:
            raise ctx.fail(cfg_src, "blendshape_params." + key, _short(v), f"a list of {n} {kind}")
        return v

    active_raw = vector("bsSolveActivePoses", [1] * n, "0/1 flags")
    active = np.array(
        [
            _int(ctx, cfg_src, f"blendshape_params.bsSolveActivePoses[{i}]", x) != 0
            for i, x in enumerate(active_raw)
        ],
        dtype=bool,
    )
    cancel = _pair_array(
        ctx,
        cfg_src,
        "blendshape_params.bsSolveCancelPoses",
        bp.get("bsSolveCancelPoses", [-1] * n),
        n,
    )
    sym = _pair_array(
        ctx,
        cfg_src,
        "blendshape_params.bsSolveSymmetryPoses",
        bp.get("bsSolveSymmetryPoses", [-1] * n),
        n,
    )
    mult = np.array(
        [
            _num(ctx, cfg_src, f"blendshape_params.bsWeightMultipliers[{i}]", x)
            for i, x in enumerate(vector("bsWeightMultipliers", [1.0] * n, "numbers"))
        ],
        dtype=np.float32,
    )
    offs = np.array(
        [
            _num(ctx, cfg_src, f"blendshape_params.bsWeightOffsets[{i}]", x)
            for i, x in enumerate(vector("bsWeightOffsets", [0.0] * n, "numbers"))
        ],
        dtype=np.float32,
    )
    return BlendshapeParams(
        l1=scalar("strengthL1regularization"),
        l2=scalar("strengthL2regularization"),
        temporal=scalar("strengthTemporalSmoothing"),
        symmetry=scalar("strengthSymmetry"),
        template_bb_size=scalar("templateBBSize"),
        active=active,
        cancel_pairs=cancel,
        symmetry_pairs=sym,
        multipliers=mult,
        offsets=offs,
    )


def _blendshape_set(
    ctx: _Ctx,
    referrer: Path,
    field: str,
    entry: Any,
    which: Literal["skin", "tongue"],
    neutral_size: int,
) -> BlendshapeSet:
    if not isinstance(entry, Mapping):
        raise ctx.fail(referrer, field, _short(entry), "an object {config, data}")
    data_path = ctx.resolve(
        referrer, field + ".data", _get(ctx, referrer, entry, "data", field + ".")
    )
    cfg_rel = entry.get("config")
    cfg_path = ctx.resolve(referrer, field + ".config", cfg_rel) if cfg_rel is not None else None
    arrays = ctx.npz(data_path, referrer, field + ".data")
    if "poseNames" not in arrays:
        raise ctx.fail(data_path, "poseNames", "absent", "an array of pose names")
    names = [str(x) for x in arrays["poseNames"].reshape(-1).tolist()]
    if not names or names[0] != "neutral":
        raise ctx.fail(data_path, "poseNames[0]", names[0] if names else None, "'neutral'")
    poses = tuple(names[1:])
    allowed = ARKIT_SKIN_NPZ_KEYS if which == "skin" else TONGUE_NAMES
    for i, p in enumerate(poses):
        if p not in allowed:
            raise ctx.fail(
                data_path,
                f"poseNames[{i + 1}]",
                p,
                f"one of the {len(allowed)} {'ARKit skin' if which == 'skin' else 'tongue'} "
                "pose names (lowerCamel)",
            )
    if len(set(poses)) != len(poses):
        raise ctx.fail(data_path, "poseNames", "duplicate names", "unique pose names")
    neutral = _array(ctx, data_path, arrays, "neutral", neutral_size)
    deltas = np.empty((len(poses), neutral_size), dtype=np.float32)
    for i, p in enumerate(poses):
        deltas[i] = _array(ctx, data_path, arrays, p, neutral_size)
    mask: np.ndarray | None = None
    if "frontalMask" in arrays:
        m = arrays["frontalMask"].reshape(-1)
        nverts = neutral_size // 3
        if m.dtype.kind not in "iu" or (m.size and (m.min() < 0 or m.max() >= nverts)):
            raise ctx.fail(
                data_path,
                "frontalMask",
                f"dtype {m.dtype}, {m.size} values",
                f"integer vertex indices in [0, {nverts})",
            )
        mask = m.astype(np.int64)
    params = _blendshape_params(ctx, cfg_path, len(poses))
    return BlendshapeSet(
        pose_names=poses, neutral=neutral, deltas=deltas, frontal_mask=mask, params=params
    )


def _blendshape_pair(
    ctx: _Ctx, referrer: Path, field: str, entry: Any, skin_size: int, tongue_size: int
) -> tuple[BlendshapeSet, BlendshapeSet]:
    if not isinstance(entry, Mapping):
        raise ctx.fail(referrer, field, _short(entry), "an object {skin, tongue}")
    skin = _blendshape_set(
        ctx,
        referrer,
        field + ".skin",
        _get(ctx, referrer, entry, "skin", field + "."),
        "skin",
        skin_size,
    )
    tongue = _blendshape_set(
        ctx,
        referrer,
        field + ".tongue",
        _get(ctx, referrer, entry, "tongue", field + "."),
        "tongue",
        tongue_size,
    )
    return skin, tongue


# --------------------------------------------------------------------------------------
# configs, network info, onnx


def _model_config(
    ctx: _Ctx, path: Path, referrer: Path, field: str, regression: bool
) -> tuple[dict[str, float], str | None]:
    if not path.is_file():
        raise ctx.fail(referrer, field, "missing file " + str(path), "an existing JSON file")
    doc = ctx.json(path)
    cfg = _get(ctx, path, doc, "config")
    if not isinstance(cfg, Mapping):
        raise ctx.fail(path, "config", _short(cfg), "an object")
    required = MODEL_CONFIG_KEYS + (REGRESSION_CONFIG_KEYS if regression else ())
    out: dict[str, float] = {}
    source_shot: str | None = None
    for key in required:
        if key not in cfg:
            raise ctx.fail(path, "config." + key, "absent", "a value")
    for key, v in cfg.items():
        if key == "source_shot" and isinstance(v, str):
            source_shot = v
            continue
        out[str(key)] = _num(ctx, path, "config." + str(key), v)
    out.setdefault("blink_offset", 0.0)
    return out, source_shot


def _check_id(ctx: _Ctx, src: Path, info: Mapping[str, Any]) -> ModelKind:
    ident = _get(ctx, src, info, "id")
    t = ident.get("type") if isinstance(ident, Mapping) else None
    if t not in ("regression", "diffusion"):
        raise ctx.fail(src, "id.type", t, "'regression' or 'diffusion'")
    out = ident.get("output")
    if out != "geometry":
        raise ctx.fail(src, "id.output", out, "'geometry'")
    return "regression" if t == "regression" else "diffusion"


def _emotions(
    ctx: _Ctx, src: Path, info: Mapping[str, Any], key: str
) -> tuple[tuple[str, ...], np.ndarray]:
    names = _param(ctx, src, info, key)
    if not isinstance(names, list) or [str(n) for n in names] != list(EMOTIONS):
        raise ctx.fail(src, "params." + key, _short(names), f"the 10 emotions {list(EMOTIONS)}")
    default = _param(ctx, src, info, "default_emotion")
    if not isinstance(default, list) or len(default) != len(names):
        raise ctx.fail(src, "params.default_emotion", _short(default), f"{len(names)} numbers")
    vals = [_num(ctx, src, f"params.default_emotion[{i}]", x) for i, x in enumerate(default)]
    return tuple(EMOTIONS), np.array(vals, dtype=np.float32)


def _audio(ctx: _Ctx, src: Path, info: Mapping[str, Any], kind: ModelKind) -> AudioParams:
    ap = _param(ctx, src, info, "audio_params")
    nested = isinstance(info.get("params"), Mapping) and "audio_params" in info["params"]
    logger.debug(
        "%s: audio_params read %s", src,
        "under params (older layout)" if nested else "at the top level (NVIDIA's layout)",
    )  # fmt: skip
    if not isinstance(ap, Mapping):
        raise ctx.fail(src, "audio_params", _short(ap), "an object")

    def val(key: str, required: bool) -> int:
        if key not in ap:
            if required:
                raise ctx.fail(src, "audio_params." + key, "absent", "an integer")
            return 0
        return _int(ctx, src, "audio_params." + key, ap[key])

    sr = val("samplerate", True)
    if sr <= 0:
        raise ctx.fail(src, "audio_params.samplerate", sr, "a positive sample rate")
    buffer_len = val("buffer_len", True)
    if buffer_len <= 0:
        raise ctx.fail(src, "audio_params.buffer_len", buffer_len, "a positive length")
    if kind == "regression":
        return AudioParams(sr, buffer_len, val("buffer_ofs", True), 0, 0)
    return AudioParams(sr, buffer_len, 0, val("padding_left", True), val("padding_right", True))


def _trt(ctx: _Ctx, path: Path) -> tuple[Mapping[str, Any], int, int]:
    doc = ctx.json(path)
    defaults = _get(ctx, path, doc, "defaults")
    mx = _int(
        ctx,
        path,
        "defaults.MAX_BATCH_SIZE",
        _get(ctx, path, defaults, "MAX_BATCH_SIZE", "defaults."),
        1,
    )
    opt = _int(
        ctx,
        path,
        "defaults.OPT_BATCH_SIZE",
        _get(ctx, path, defaults, "OPT_BATCH_SIZE", "defaults."),
        1,
    )
    if opt > mx:
        raise ctx.fail(path, "defaults.OPT_BATCH_SIZE", opt, f"<= MAX_BATCH_SIZE ({mx})")
    bp = _get(ctx, path, doc, "trt_build_param")
    if not isinstance(bp, Mapping) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in bp.values()
    ):
        raise ctx.fail(path, "trt_build_param", _short(bp), "an object of lists of trtexec args")
    return doc, mx, opt


def check_onnx_interface(path: Path, kind: ModelKind) -> None:
    """Check the graph's input/output tensor names and ranks (weights are not read)."""
    import onnx

    if not path.is_file():
        raise ModelFolderError(str(path), "<file>", "missing file", "the network ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends from protobuf
        raise ModelFolderError(
            str(path), "<model>", f"unreadable ({err})", "an ONNX model"
        ) from err
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    for what, tensors, expected in (
        ("input", [i for i in graph.input if i.name not in initializers], ONNX_INPUTS[kind]),
        ("output", list(graph.output), ONNX_OUTPUTS[kind]),
    ):
        names = [t.name for t in tensors]
        if sorted(names) != sorted(expected):
            raise ModelFolderError(
                str(path), f"graph.{what}", names, f"exactly {sorted(expected)} for {kind}"
            )
        for t in tensors:
            tt = t.type.tensor_type
            if tt.elem_type != onnx.TensorProto.FLOAT:
                raise ModelFolderError(
                    str(path),
                    f"graph.{what}[{t.name}].elem_type",
                    onnx.TensorProto.DataType.Name(tt.elem_type),
                    "FLOAT",
                )
            rank = len(tt.shape.dim) if tt.HasField("shape") else -1
            if rank != expected[t.name]:
                raise ModelFolderError(
                    str(path), f"graph.{what}[{t.name}].rank", rank, str(expected[t.name])
                )


# --------------------------------------------------------------------------------------
# the two kinds


def _saccade(ctx: _Ctx, src: Path, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    return _array(ctx, src, arrays, "saccade_rot_matrix", SACCADE_LEN * 2).reshape(SACCADE_LEN, 2)


def _load_regression(
    ctx: _Ctx, mj: Path, doc: Mapping[str, Any], info_path: Path, info: Mapping[str, Any]
) -> tuple[tuple[Identity, ...], RegressionSpec]:
    def n(key: str, minimum: int = 1) -> int:
        return _int(ctx, info_path, "params." + key, _param(ctx, info_path, info, key), minimum)

    imp_len = n("implicit_emotion_len", 0)
    s_skin, v_skin = n("num_shapes_skin"), n("num_verts_skin")
    s_tongue, v_tongue = n("num_shapes_tongue"), n("num_verts_tongue")
    jaw, eyes = n("result_jaw_size"), n("result_eyes_size")
    if jaw != JAW_SIZE:
        raise ctx.fail(info_path, "params.result_jaw_size", jaw, str(JAW_SIZE))
    if eyes != EYES_SIZE:
        raise ctx.fail(info_path, "params.result_eyes_size", eyes, str(EYES_SIZE))
    skin_n, tongue_n = v_skin * 3, v_tongue * 3

    cfg_path = ctx.resolve(mj, "modelConfigPath", _get(ctx, mj, doc, "modelConfigPath"))
    config, source_shot = _model_config(ctx, cfg_path, mj, "modelConfigPath", regression=True)

    data_path = ctx.resolve(mj, "modelDataPath", _get(ctx, mj, doc, "modelDataPath"))
    arrays = ctx.npz(data_path, mj, "modelDataPath")
    _exact_keys(ctx, data_path, arrays, REGRESSION_DATA_KEYS)
    skin_pca = _matrix(ctx, data_path, arrays, "shapes_matrix_skin", s_skin, skin_n)
    tongue_pca = _matrix(ctx, data_path, arrays, "shapes_matrix_tongue", s_tongue, tongue_n)
    mean_skin = _array(ctx, data_path, arrays, "shapes_mean_skin", skin_n)
    mean_tongue = _array(ctx, data_path, arrays, "shapes_mean_tongue", tongue_n)
    lip = _array(ctx, data_path, arrays, "lip_open_pose_delta", skin_n)
    eye = _array(ctx, data_path, arrays, "eye_close_pose_delta", skin_n)
    jaw_neutral = _array(ctx, data_path, arrays, "neutral_jaw", JAW_SIZE)
    saccade = _saccade(ctx, data_path, arrays)
    del arrays

    emo_path = ctx.resolve(mj, "emotionDatabasePath", _get(ctx, mj, doc, "emotionDatabasePath"))
    emo = ctx.npz(emo_path, mj, "emotionDatabasePath")
    _exact_keys(ctx, emo_path, emo, ("emo_spec_names", "emo_spec_start", "emo_spec_size", "emo_db"))
    names = [str(x) for x in emo["emo_spec_names"].reshape(-1).tolist()]
    starts = emo["emo_spec_start"].reshape(-1)
    sizes = emo["emo_spec_size"].reshape(-1)
    db = emo["emo_db"]
    if len(starts) != len(names) or len(sizes) != len(names):
        raise ctx.fail(
            emo_path,
            "emo_spec_start/emo_spec_size",
            f"{len(starts)}/{len(sizes)} entries",
            f"{len(names)} entries (one per emo_spec_names)",
        )
    if db.ndim != 2 or db.shape[1] != imp_len:
        raise ctx.fail(emo_path, "emo_db", f"shape {list(db.shape)}", f"[frames, {imp_len}]")
    shot_raw: Any = source_shot if source_shot is not None else config["source_shot"]
    if isinstance(shot_raw, str):
        if shot_raw not in names:
            raise ctx.fail(cfg_path, "config.source_shot", shot_raw, f"one of {names}")
        shot = names.index(shot_raw)
    else:
        shot = _int(ctx, cfg_path, "config.source_shot", shot_raw)
        if shot >= len(names):
            raise ctx.fail(cfg_path, "config.source_shot", shot, f"an index < {len(names)}")
    frame = _int(ctx, cfg_path, "config.source_frame", config["source_frame"])
    if frame >= int(sizes[shot]):
        raise ctx.fail(cfg_path, "config.source_frame", frame, f"< {int(sizes[shot])} (shot size)")
    row = int(starts[shot]) + frame
    if row >= db.shape[0]:
        raise ctx.fail(emo_path, "emo_spec_start", row, f"a row < {db.shape[0]}")
    implicit = np.asarray(db[row], dtype=np.float32).copy()

    bs = _get(ctx, mj, doc, "blendshapePaths")
    skin, tongue = _blendshape_pair(ctx, mj, "blendshapePaths", bs, skin_n, tongue_n)

    actor = str(_get(ctx, info_path, info["id"], "actor", "id.") if "actor" in info["id"] else "")
    name = actor[:1].upper() + actor[1:] if actor else "Default"
    ident = Identity(
        name=name,
        config=MappingProxyType(config),
        skin_neutral=mean_skin,
        tongue_neutral=mean_tongue,
        jaw_neutral=jaw_neutral,
        lip_open_delta=lip,
        eye_close_delta=eye,
        saccade=saccade,
        skin_pca=skin_pca,
        tongue_pca=tongue_pca,
        skin=skin,
        tongue=tongue,
        source_shot=source_shot,
    )
    spec = RegressionSpec(
        implicit_emotion_len=imp_len,
        implicit_emotion=implicit,
        num_shapes_skin=s_skin,
        num_verts_skin=v_skin,
        num_shapes_tongue=s_tongue,
        num_verts_tongue=v_tongue,
        result_jaw_size=jaw,
        result_eyes_size=eyes,
    )
    return (ident,), spec


def _load_diffusion(
    ctx: _Ctx, mj: Path, doc: Mapping[str, Any], info_path: Path, info: Mapping[str, Any]
) -> tuple[tuple[Identity, ...], DiffusionSpec]:
    def n(key: str, minimum: int = 1) -> int:
        return _int(ctx, info_path, "params." + key, _param(ctx, info_path, info, key), minimum)

    spec = DiffusionSpec(
        skin_size=n("skin_size"),
        tongue_size=n("tongue_size"),
        jaw_size=n("jaw_size"),
        eyes_size=n("eyes_size"),
        num_diffusion_steps=n("num_diffusion_steps"),
        num_gru_layers=n("num_gru_layers"),
        gru_latent_dim=n("gru_latent_dim"),
        left_truncate=n("num_frames_left_truncate", 0),
        right_truncate=n("num_frames_right_truncate", 0),
        center=n("num_frames_center"),
    )
    for key, size in (("skin_size", spec.skin_size), ("tongue_size", spec.tongue_size)):
        if size % 3:
            raise ctx.fail(info_path, "params." + key, size, "a multiple of 3 (xyz per vertex)")
    if spec.jaw_size != JAW_SIZE:
        raise ctx.fail(info_path, "params.jaw_size", spec.jaw_size, str(JAW_SIZE))
    if spec.eyes_size != EYES_SIZE:
        raise ctx.fail(info_path, "params.eyes_size", spec.eyes_size, str(EYES_SIZE))
    names_raw = _param(ctx, info_path, info, "identities")
    if (
        not isinstance(names_raw, list)
        or not names_raw
        or not all(isinstance(x, str) for x in names_raw)
    ):
        raise ctx.fail(
            info_path, "params.identities", _short(names_raw), "a non-empty list of names"
        )
    names: list[str] = names_raw
    lists = {}
    for key in ("modelConfigPaths", "modelDataPaths", "blendshapePaths"):
        v = _get(ctx, mj, doc, key)
        if not isinstance(v, list) or len(v) != len(names):
            found = f"{len(v)} entries" if isinstance(v, list) else v
            raise ctx.fail(
                mj, key, found, f"a list of {len(names)} entries (one per identity {names})"
            )
        lists[key] = v
    identities = []
    for i, name in enumerate(names):
        cfg_path = ctx.resolve(mj, f"modelConfigPaths[{i}]", lists["modelConfigPaths"][i])
        config, source_shot = _model_config(
            ctx, cfg_path, mj, f"modelConfigPaths[{i}]", regression=False
        )
        data_path = ctx.resolve(mj, f"modelDataPaths[{i}]", lists["modelDataPaths"][i])
        arrays = ctx.npz(data_path, mj, f"modelDataPaths[{i}]")
        _exact_keys(ctx, data_path, arrays, DIFFUSION_DATA_KEYS)
        skin, tongue = _blendshape_pair(
            ctx,
            mj,
            f"blendshapePaths[{i}]",
            lists["blendshapePaths"][i],
            spec.skin_size,
            spec.tongue_size,
        )
        identities.append(
            Identity(
                name=name,
                config=MappingProxyType(config),
                skin_neutral=_array(ctx, data_path, arrays, "neutral_skin", spec.skin_size),
                tongue_neutral=_array(ctx, data_path, arrays, "neutral_tongue", spec.tongue_size),
                jaw_neutral=_array(ctx, data_path, arrays, "neutral_jaw", JAW_SIZE),
                lip_open_delta=_array(
                    ctx, data_path, arrays, "lip_open_pose_delta", spec.skin_size
                ),
                eye_close_delta=_array(
                    ctx, data_path, arrays, "eye_close_pose_delta", spec.skin_size
                ),
                saccade=_saccade(ctx, data_path, arrays),
                skin_pca=None,
                tongue_pca=None,
                skin=skin,
                tongue=tongue,
                source_shot=source_shot,
            )
        )
    return tuple(identities), spec


def load_model_folder(path: str | os.PathLike[str]) -> ModelFolder:
    """Load and cross-check the model folder at ``path`` (the folder or its ``model.json``).

    Raises :class:`ModelFolderError` (file, field, found, expected) on any inconsistency.
    """
    p = Path(path)
    mj = p if p.name == "model.json" or p.is_file() else p / "model.json"
    folder = mj.parent
    ctx = _Ctx(folder)
    if not mj.is_file():
        raise ModelFolderError(str(mj), "<file>", "missing file", "model.json of a model folder")
    doc = ctx.json(mj)
    if not isinstance(doc, Mapping):
        raise ctx.fail(mj, "<document>", type(doc).__name__, "a JSON object")
    info_path = ctx.resolve(mj, "networkInfoPath", _get(ctx, mj, doc, "networkInfoPath"))
    info = ctx.json(info_path, mj, "networkInfoPath")
    if not isinstance(info, Mapping):
        raise ctx.fail(info_path, "<document>", type(info).__name__, "a JSON object")
    kind = _check_id(ctx, info_path, info)
    network_path = ctx.resolve(mj, "networkPath", _get(ctx, mj, doc, "networkPath"))
    onnx_path = network_path.with_suffix(".onnx")
    check_onnx_interface(onnx_path, kind)
    trt_path = folder / "trt_info.json"
    trt_info, max_batch, opt_batch = _trt(ctx, trt_path)
    audio = _audio(ctx, info_path, info, kind)
    regression: RegressionSpec | None = None
    diffusion: DiffusionSpec | None = None
    if kind == "regression":
        emotions, default = _emotions(ctx, info_path, info, "explicit_emotions")
        identities, regression = _load_regression(ctx, mj, doc, info_path, info)
    else:
        emotions, default = _emotions(ctx, info_path, info, "emotions")
        identities, diffusion = _load_diffusion(ctx, mj, doc, info_path, info)
    logger.info(
        "loaded %s model folder %s (%d identities: %s)",
        kind,
        folder,
        len(identities),
        ", ".join(i.name for i in identities),
    )
    return ModelFolder(
        path=folder,
        name=folder.resolve().name,
        kind=kind,
        network_info=MappingProxyType(dict(info)),
        trt_info=MappingProxyType(dict(trt_info)),
        onnx_path=onnx_path,
        network_path=network_path,
        emotions=emotions,
        default_emotion=default,
        identities=identities,
        audio=audio,
        regression=regression,
        diffusion=diffusion,
        max_batch=max_batch,
        opt_batch=opt_batch,
    )
