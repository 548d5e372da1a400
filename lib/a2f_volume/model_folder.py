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

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from a2f_volume.blendshape_parsing import (
    blendshape_pair,
)
from a2f_volume.errors import ModelFolderError
from a2f_volume.folder_parsing import (
    LoadContext,
    array_field,
    get_field,
    int_field,
    matrix_field,
    num_field,
    param,
    short_value,
)
from a2f_volume.model_kind import is_emotion_network_info
from a2f_volume.model_spec import (
    ARKIT_SKIN_NAMES,
    ARKIT_SKIN_NPZ_KEYS,
    DIFFUSION_DATA_KEYS,
    EMOTIONS,
    EYES_SIZE,
    JAW_SIZE,
    MODEL_CONFIG_KEYS,
    NPZ_MAX_ARRAY_BYTES,
    ONNX_INPUTS,
    ONNX_OUTPUTS,
    REGRESSION_CONFIG_KEYS,
    REGRESSION_DATA_KEYS,
    SACCADE_LEN,
    TONGUE_NAMES,
    TONGUE_OUTPUT_NAMES,
    AudioParams,
    BlendshapeParams,
    BlendshapeSet,
    DiffusionSpec,
    Identity,
    ModelFolder,
    ModelKind,
    RegressionSpec,
    npz_pose_key,
)

# The public names of the loader, wherever they are defined.
__all__ = [
    "ARKIT_SKIN_NAMES", "ARKIT_SKIN_NPZ_KEYS", "DIFFUSION_DATA_KEYS", "EMOTIONS", "EYES_SIZE",
    "JAW_SIZE", "MODEL_CONFIG_KEYS", "NPZ_MAX_ARRAY_BYTES", "ONNX_INPUTS", "ONNX_OUTPUTS",
    "REGRESSION_CONFIG_KEYS", "REGRESSION_DATA_KEYS", "SACCADE_LEN", "TONGUE_NAMES",
    "TONGUE_OUTPUT_NAMES", "AudioParams", "BlendshapeParams", "BlendshapeSet", "DiffusionSpec",
    "Identity", "ModelFolder", "ModelKind", "RegressionSpec", "check_onnx_interface",
    "load_model_folder", "npz_pose_key",
]  # fmt: skip

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# configs, network info, onnx


def _model_config(
    ctx: LoadContext, path: Path, referrer: Path, field: str, regression: bool
) -> tuple[dict[str, float], str | None]:
    if not path.is_file():
        raise ctx.fail(referrer, field, "missing file " + str(path), "an existing JSON file")
    doc = ctx.json(path)
    cfg = get_field(ctx, path, doc, "config")
    if not isinstance(cfg, Mapping):
        raise ctx.fail(path, "config", short_value(cfg), "an object")
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
        out[str(key)] = num_field(ctx, path, "config." + str(key), v)
    out.setdefault("blink_offset", 0.0)
    return out, source_shot


def _check_id(ctx: LoadContext, src: Path, info: Mapping[str, Any]) -> ModelKind:
    if is_emotion_network_info(info):  # load with a2f_volume.emotion_folder instead
        raise ctx.fail(src, "id", "absent (an Audio2Emotion folder)", "a face model's id")
    ident = get_field(ctx, src, info, "id")
    t = ident.get("type") if isinstance(ident, Mapping) else None
    if t not in ("regression", "diffusion"):
        raise ctx.fail(src, "id.type", t, "'regression' or 'diffusion'")
    out = ident.get("output")
    if out != "geometry":
        raise ctx.fail(src, "id.output", out, "'geometry'")
    return "regression" if t == "regression" else "diffusion"


def _emotions(
    ctx: LoadContext, src: Path, info: Mapping[str, Any], key: str
) -> tuple[tuple[str, ...], np.ndarray]:
    names = param(ctx, src, info, key)
    if not isinstance(names, list) or [str(n) for n in names] != list(EMOTIONS):
        raise ctx.fail(
            src, "params." + key, short_value(names), f"the 10 emotions {list(EMOTIONS)}"
        )
    default = param(ctx, src, info, "default_emotion")
    if not isinstance(default, list) or len(default) != len(names):
        raise ctx.fail(src, "params.default_emotion", short_value(default), f"{len(names)} numbers")
    vals = [num_field(ctx, src, f"params.default_emotion[{i}]", x) for i, x in enumerate(default)]
    return tuple(EMOTIONS), np.array(vals, dtype=np.float32)


def _audio(ctx: LoadContext, src: Path, info: Mapping[str, Any], kind: ModelKind) -> AudioParams:
    ap = param(ctx, src, info, "audio_params")
    if not isinstance(ap, Mapping):
        raise ctx.fail(src, "audio_params", short_value(ap), "an object")

    def val(key: str, required: bool) -> int:
        if key not in ap:
            if required:
                raise ctx.fail(src, "audio_params." + key, "absent", "an integer")
            return 0
        return int_field(ctx, src, "audio_params." + key, ap[key])

    sr = val("samplerate", True)
    if sr <= 0:
        raise ctx.fail(src, "audio_params.samplerate", sr, "a positive sample rate")
    buffer_len = val("buffer_len", True)
    if buffer_len <= 0:
        raise ctx.fail(src, "audio_params.buffer_len", buffer_len, "a positive length")
    if kind == "regression":
        return AudioParams(sr, buffer_len, val("buffer_ofs", True), 0, 0)
    return AudioParams(sr, buffer_len, 0, val("padding_left", True), val("padding_right", True))


def _trt(ctx: LoadContext, path: Path) -> tuple[Mapping[str, Any], int, int]:
    doc = ctx.json(path)
    defaults = get_field(ctx, path, doc, "defaults")
    mx = int_field(
        ctx,
        path,
        "defaults.MAX_BATCH_SIZE",
        get_field(ctx, path, defaults, "MAX_BATCH_SIZE", "defaults."),
        1,
    )
    opt = int_field(
        ctx,
        path,
        "defaults.OPT_BATCH_SIZE",
        get_field(ctx, path, defaults, "OPT_BATCH_SIZE", "defaults."),
        1,
    )
    if opt > mx:
        raise ctx.fail(path, "defaults.OPT_BATCH_SIZE", opt, f"<= MAX_BATCH_SIZE ({mx})")
    bp = get_field(ctx, path, doc, "trt_build_param")
    if not isinstance(bp, Mapping) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in bp.values()
    ):
        raise ctx.fail(
            path, "trt_build_param", short_value(bp), "an object of lists of trtexec args"
        )
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


def _saccade(ctx: LoadContext, src: Path, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    return array_field(ctx, src, arrays, "saccade_rot_matrix", SACCADE_LEN * 2).reshape(
        SACCADE_LEN, 2
    )


def _load_regression(
    ctx: LoadContext, mj: Path, doc: Mapping[str, Any], info_path: Path, info: Mapping[str, Any]
) -> tuple[tuple[Identity, ...], RegressionSpec]:
    def n(key: str, minimum: int = 1) -> int:
        return int_field(ctx, info_path, "params." + key, param(ctx, info_path, info, key), minimum)

    imp_len = n("implicit_emotion_len", 0)
    s_skin, v_skin = n("num_shapes_skin"), n("num_verts_skin")
    s_tongue, v_tongue = n("num_shapes_tongue"), n("num_verts_tongue")
    jaw, eyes = n("result_jaw_size"), n("result_eyes_size")
    if jaw != JAW_SIZE:
        raise ctx.fail(info_path, "params.result_jaw_size", jaw, str(JAW_SIZE))
    if eyes != EYES_SIZE:
        raise ctx.fail(info_path, "params.result_eyes_size", eyes, str(EYES_SIZE))
    skin_n, tongue_n = v_skin * 3, v_tongue * 3

    cfg_path = ctx.resolve(mj, "modelConfigPath", get_field(ctx, mj, doc, "modelConfigPath"))
    config, source_shot = _model_config(ctx, cfg_path, mj, "modelConfigPath", regression=True)

    data_path = ctx.resolve(mj, "modelDataPath", get_field(ctx, mj, doc, "modelDataPath"))
    arrays = ctx.npz(data_path, mj, "modelDataPath", REGRESSION_DATA_KEYS)
    skin_pca = matrix_field(ctx, data_path, arrays, "shapes_matrix_skin", s_skin, skin_n)
    tongue_pca = matrix_field(ctx, data_path, arrays, "shapes_matrix_tongue", s_tongue, tongue_n)
    mean_skin = array_field(ctx, data_path, arrays, "shapes_mean_skin", skin_n)
    mean_tongue = array_field(ctx, data_path, arrays, "shapes_mean_tongue", tongue_n)
    lip = array_field(ctx, data_path, arrays, "lip_open_pose_delta", skin_n)
    eye = array_field(ctx, data_path, arrays, "eye_close_pose_delta", skin_n)
    jaw_neutral = array_field(ctx, data_path, arrays, "neutral_jaw", JAW_SIZE)
    saccade = _saccade(ctx, data_path, arrays)
    del arrays

    emo_path = ctx.resolve(
        mj, "emotionDatabasePath", get_field(ctx, mj, doc, "emotionDatabasePath")
    )
    emo = ctx.npz(
        emo_path,
        mj,
        "emotionDatabasePath",
        ("emo_spec_names", "emo_spec_start", "emo_spec_size", "emo_db"),
    )
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
        shot = int_field(ctx, cfg_path, "config.source_shot", shot_raw)
        if shot >= len(names):
            raise ctx.fail(cfg_path, "config.source_shot", shot, f"an index < {len(names)}")
    frame = int_field(ctx, cfg_path, "config.source_frame", config["source_frame"])
    if frame >= int(sizes[shot]):
        raise ctx.fail(cfg_path, "config.source_frame", frame, f"< {int(sizes[shot])} (shot size)")
    row = int(starts[shot]) + frame
    if row >= db.shape[0]:
        raise ctx.fail(emo_path, "emo_spec_start", row, f"a row < {db.shape[0]}")
    implicit = np.asarray(db[row], dtype=np.float32).copy()

    bs = get_field(ctx, mj, doc, "blendshapePaths")
    skin, tongue = blendshape_pair(ctx, mj, "blendshapePaths", bs, skin_n, tongue_n)

    actor = str(
        get_field(ctx, info_path, info["id"], "actor", "id.") if "actor" in info["id"] else ""
    )
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
    ctx: LoadContext, mj: Path, doc: Mapping[str, Any], info_path: Path, info: Mapping[str, Any]
) -> tuple[tuple[Identity, ...], DiffusionSpec]:
    def n(key: str, minimum: int = 1) -> int:
        return int_field(ctx, info_path, "params." + key, param(ctx, info_path, info, key), minimum)

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
    names_raw = param(ctx, info_path, info, "identities")
    if (
        not isinstance(names_raw, list)
        or not names_raw
        or not all(isinstance(x, str) for x in names_raw)
    ):
        raise ctx.fail(
            info_path, "params.identities", short_value(names_raw), "a non-empty list of names"
        )
    names: list[str] = names_raw
    lists = {}
    for key in ("modelConfigPaths", "modelDataPaths", "blendshapePaths"):
        v = get_field(ctx, mj, doc, key)
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
        arrays = ctx.npz(data_path, mj, f"modelDataPaths[{i}]", DIFFUSION_DATA_KEYS)
        skin, tongue = blendshape_pair(
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
                skin_neutral=array_field(ctx, data_path, arrays, "neutral_skin", spec.skin_size),
                tongue_neutral=array_field(
                    ctx, data_path, arrays, "neutral_tongue", spec.tongue_size
                ),
                jaw_neutral=array_field(ctx, data_path, arrays, "neutral_jaw", JAW_SIZE),
                lip_open_delta=array_field(
                    ctx, data_path, arrays, "lip_open_pose_delta", spec.skin_size
                ),
                eye_close_delta=array_field(
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
    ctx = LoadContext(folder)
    if not mj.is_file():
        raise ModelFolderError(str(mj), "<file>", "missing file", "model.json of a model folder")
    doc = ctx.json(mj)
    if not isinstance(doc, Mapping):
        raise ctx.fail(mj, "<document>", type(doc).__name__, "a JSON object")
    info_path = ctx.resolve(mj, "networkInfoPath", get_field(ctx, mj, doc, "networkInfoPath"))
    info = ctx.json(info_path, mj, "networkInfoPath")
    if not isinstance(info, Mapping):
        raise ctx.fail(info_path, "<document>", type(info).__name__, "a JSON object")
    kind = _check_id(ctx, info_path, info)
    network_path = ctx.resolve(mj, "networkPath", get_field(ctx, mj, doc, "networkPath"))
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
