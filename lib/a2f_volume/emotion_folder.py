"""Parsing and cross-checking an Audio2Emotion (A2E) model folder.

An A2E folder is NVIDIA's single-identity layout without model data or blendshapes::

    model.json          {"networkInfoPath": "network_info.json", "networkPath": "network.trt",
                         "modelConfigPath": "model_config.json"}
    network_info.json   {"audio_params": {"samplerate": 16000},
                         "emotions": ["angry", "disgust", "fear", "happy", "neutral", "sad"]}
    model_config.json   {"post_processing_config": {...}}   (see :data:`POST_PROCESSING_KEYS`)
    trt_info.json       like the face models (FP32, batch profile 1 / 10 / 128)
    network.onnx        input ``input_values`` [B, T] float32 audio -> output ``output`` [B, C]

:func:`load_emotion_folder` returns an immutable :class:`EmotionModelFolder`; any
inconsistency raises :class:`a2f_volume.errors.ModelFolderError` naming the file, the field,
what was found and what is allowed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from a2f_volume.errors import ModelFolderError
from a2f_volume.model_kind import is_emotion_network_info

logger = logging.getLogger(__name__)

#: The classifier classes of NVIDIA's A2E model, in output order.
A2E_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad")

#: Window length (samples at 16 kHz) when the ONNX graph leaves T dynamic: 3.75 s, as the
#: SDK's runtime feeds the network.
DEFAULT_WINDOW_SAMPLES = 60000

INPUT_NAME = "input_values"
OUTPUT_NAME = "output"

#: ``model_config.json`` ``post_processing_config`` keys (all required).
POST_PROCESSING_KEYS: tuple[str, ...] = (
    "output_emotion_length", "emotion_contrast", "live_blend_coef",
    "preferred_emotion_strength", "fixed_dt", "transition_smoothing",
    "enable_preferred_emotion", "preferred_emotion", "emotion_strength", "max_emotions",
    "emotion_correspondence",
)  # fmt: skip

#: Classifier class -> index into the 10 A2F emotions (amazement, anger, cheekiness, disgust,
#: fear, grief, joy, outofbreath, pain, sadness); -1 = no A2F emotion (neutral).
DEFAULT_CORRESPONDENCE: Mapping[str, int] = MappingProxyType(
    {"angry": 1, "disgust": 3, "fear": 4, "happy": 6, "neutral": -1, "sad": 9}
)

A2F_EMOTION_COUNT = 10


@dataclass(frozen=True)
class EmotionPostConfig:
    """``post_processing_config`` of ``model_config.json``: the model's defaults.

    ``correspondence`` is one entry per classifier class (network_info order): the index into
    the ``output_emotion_length`` A2F emotions, or -1.
    """

    output_emotion_length: int
    emotion_contrast: float
    live_blend_coef: float
    preferred_emotion_strength: float
    fixed_dt: float
    transition_smoothing: float
    enable_preferred_emotion: bool
    preferred_emotion: tuple[float, ...]
    emotion_strength: float
    max_emotions: int
    correspondence: tuple[int, ...]


@dataclass(frozen=True)
class EmotionModelFolder:
    """A fully cross-checked A2E folder."""

    path: Path
    name: str
    network_info: Mapping[str, Any]
    trt_info: Mapping[str, Any]
    onnx_path: Path
    network_path: Path  # engine path named by model.json (network.trt)
    samplerate: int
    classes: tuple[str, ...]
    post: EmotionPostConfig
    window_samples: int  # T fed to the network
    max_batch: int
    opt_batch: int
    kind: Literal["emotion"] = "emotion"


def _fail(path: Path | str, field: str, found: object, expected: str) -> ModelFolderError:
    return ModelFolderError(str(path), field, found, expected)


def _read_json(path: Path, referrer: Path, field: str) -> Any:
    if not path.is_file():
        raise _fail(referrer, field, "missing file " + str(path), "an existing JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(path, "<document>", f"malformed JSON ({err})", "valid JSON") from err


def _object(path: Path, field: str, v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _fail(path, field, type(v).__name__, "a JSON object")
    return v


def _relative(folder: Path, src: Path, field: str, rel: Any) -> Path:
    if not isinstance(rel, str) or not rel:
        raise _fail(src, field, rel, "a relative file path (string)")
    p = (folder / rel).resolve()
    root = folder.resolve()
    if p != root and root not in p.parents:
        raise _fail(src, field, rel, "a path inside the model folder")
    return folder / rel


def _int(src: Path, field: str, v: Any, low: int, high: int | None = None) -> int:
    ok = not isinstance(v, bool) and isinstance(v, int | float) and int(v) == v
    if ok and v >= low and (high is None or v <= high):
        return int(v)
    allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    raise _fail(src, field, v, allowed)


def _num(src: Path, field: str, v: Any, low: float, high: float | None = None,
         low_open: bool = False) -> float:
    ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
    if ok:
        above = v > low if low_open else v >= low
        if above and (high is None or v <= high):
            return float(v)
    lo = "(" if low_open else "["
    allowed = f"a number in {lo}{low:g}, {high:g}]" if high is not None else (
        f"a number {'>' if low_open else '>='} {low:g}")
    raise _fail(src, field, v, allowed)


def _classes(src: Path, info: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    ap = _object(src, "audio_params", info.get("audio_params"))
    if "samplerate" not in ap:
        raise _fail(src, "audio_params.samplerate", "absent", "an integer")
    sr = _int(src, "audio_params.samplerate", ap["samplerate"], 1)
    names = info.get("emotions")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise _fail(src, "emotions", names, "a non-empty list of distinct class names")
    return sr, tuple(names)


def _post_config(
    path: Path, referrer: Path, field: str, classes: tuple[str, ...]
) -> EmotionPostConfig:
    doc = _object(path, "<document>", _read_json(path, referrer, field))
    cfg = _object(path, "post_processing_config", doc.get("post_processing_config"))
    pre = "post_processing_config."
    for key in POST_PROCESSING_KEYS:
        if key not in cfg:
            raise _fail(path, pre + key, "absent", "a value")
    length = _int(path, pre + "output_emotion_length", cfg["output_emotion_length"],
                  A2F_EMOTION_COUNT, A2F_EMOTION_COUNT)
    enable = cfg["enable_preferred_emotion"]
    if not isinstance(enable, bool):
        raise _fail(path, pre + "enable_preferred_emotion", enable, "true or false")
    pref = cfg["preferred_emotion"]
    if not isinstance(pref, list) or len(pref) != length:
        raise _fail(path, pre + "preferred_emotion", pref, f"a list of {length} numbers in [0, 1]")
    preferred = tuple(
        _num(path, f"{pre}preferred_emotion[{i}]", v, 0.0, 1.0) for i, v in enumerate(pref)
    )
    corr = _object(path, pre + "emotion_correspondence", cfg["emotion_correspondence"])
    if sorted(corr) != sorted(classes):
        raise _fail(path, pre + "emotion_correspondence", sorted(corr),
                    f"exactly the classes of network_info.json {list(classes)}")
    correspondence = tuple(
        _int(path, f"{pre}emotion_correspondence.{c}", corr[c], -1, length - 1) for c in classes
    )
    targets = [i for i in correspondence if i >= 0]
    if len(set(targets)) != len(targets):
        raise _fail(path, pre + "emotion_correspondence", dict(corr),
                    "each A2F emotion index used by at most one class")
    return EmotionPostConfig(
        output_emotion_length=length,
        emotion_contrast=_num(path, pre + "emotion_contrast", cfg["emotion_contrast"], 0.0,
                              low_open=True),
        live_blend_coef=_num(path, pre + "live_blend_coef", cfg["live_blend_coef"], 0.0, 1.0),
        preferred_emotion_strength=_num(path, pre + "preferred_emotion_strength",
                                        cfg["preferred_emotion_strength"], 0.0, 1.0),
        fixed_dt=_num(path, pre + "fixed_dt", cfg["fixed_dt"], 0.0, low_open=True),
        transition_smoothing=_num(path, pre + "transition_smoothing",
                                  cfg["transition_smoothing"], 0.0),
        enable_preferred_emotion=enable,
        preferred_emotion=preferred,
        emotion_strength=_num(path, pre + "emotion_strength", cfg["emotion_strength"], 0.0),
        max_emotions=_int(path, pre + "max_emotions", cfg["max_emotions"], 1, len(classes)),
        correspondence=correspondence,
    )


def _trt(path: Path, referrer: Path) -> tuple[Mapping[str, Any], int, int]:
    doc = _object(path, "<document>", _read_json(path, referrer, "trt_info.json"))
    defaults = _object(path, "defaults", doc.get("defaults"))
    for key in ("MAX_BATCH_SIZE", "OPT_BATCH_SIZE"):
        if key not in defaults:
            raise _fail(path, "defaults." + key, "absent", "an integer >= 1")
    mx = _int(path, "defaults.MAX_BATCH_SIZE", defaults["MAX_BATCH_SIZE"], 1)
    opt = _int(path, "defaults.OPT_BATCH_SIZE", defaults["OPT_BATCH_SIZE"], 1, mx)
    bp = doc.get("trt_build_param")
    if not isinstance(bp, Mapping) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in bp.values()
    ):
        raise _fail(path, "trt_build_param", bp, "an object of lists of trtexec args")
    return doc, mx, opt


def check_emotion_onnx(path: Path, n_classes: int) -> int | None:
    """Check the graph's interface; returns the static window length T, or None if dynamic."""
    import onnx

    if not path.is_file():
        raise _fail(path, "<file>", "missing file", "the network ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends from protobuf
        raise _fail(path, "<model>", f"unreadable ({err})", "an ONNX model") from err
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    dims: dict[str, list[Any]] = {}
    for what, tensors, want in (("input", inputs, INPUT_NAME),
                                ("output", list(graph.output), OUTPUT_NAME)):
        names = [t.name for t in tensors]
        if names != [want]:
            raise _fail(path, f"graph.{what}", names, f"exactly ['{want}'] for an A2E model")
        tt = tensors[0].type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise _fail(path, f"graph.{what}[{want}].elem_type",
                        onnx.TensorProto.DataType.Name(tt.elem_type), "FLOAT")
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(shape) != 2:
            raise _fail(path, f"graph.{what}[{want}].rank", len(shape), "2")
        dims[what] = shape
    out_c = dims["output"][1]
    if out_c is not None and out_c != n_classes:
        raise _fail(path, f"graph.output[{OUTPUT_NAME}].shape[1]", out_c,
                    f"{n_classes} (the classes of network_info.json)")
    t = dims["input"][1]
    return int(t) if t is not None else None


def load_emotion_folder(path: str | os.PathLike[str]) -> EmotionModelFolder:
    """Load and cross-check the A2E folder at ``path`` (the folder or its ``model.json``).

    Raises :class:`ModelFolderError` (file, field, found, expected) on any inconsistency.
    """
    p = Path(path)
    mj = p if p.name == "model.json" or p.is_file() else p / "model.json"
    folder = mj.parent
    if not mj.is_file():
        raise _fail(mj, "<file>", "missing file", "model.json of a model folder")
    doc = _object(mj, "<document>", _read_json(mj, mj, "<file>"))
    for key in ("networkInfoPath", "networkPath", "modelConfigPath"):
        if key not in doc:
            raise _fail(mj, key, "absent", "a relative file path (string)")
    info_path = _relative(folder, mj, "networkInfoPath", doc["networkInfoPath"])
    info = _object(info_path, "<document>", _read_json(info_path, mj, "networkInfoPath"))
    if not is_emotion_network_info(info):
        if "id" in info:
            raise _fail(info_path, "id", info["id"],
                        "no 'id' in an Audio2Emotion network_info.json (this is a face model)")
        raise _fail(info_path, "<document>", sorted(info),
                    "an Audio2Emotion network info: {'audio_params': {...}, 'emotions': [...]}")
    samplerate, classes = _classes(info_path, info)
    network_path = _relative(folder, mj, "networkPath", doc["networkPath"])
    onnx_path = network_path.with_suffix(".onnx")
    static_t = check_emotion_onnx(onnx_path, len(classes))
    cfg_path = _relative(folder, mj, "modelConfigPath", doc["modelConfigPath"])
    post = _post_config(cfg_path, mj, "modelConfigPath", classes)
    trt_info, max_batch, opt_batch = _trt(folder / "trt_info.json", mj)
    window = static_t if static_t is not None else DEFAULT_WINDOW_SAMPLES
    logger.info("loaded emotion model folder %s (%d classes, window %d samples)",
                folder, len(classes), window)
    return EmotionModelFolder(
        path=folder,
        name=folder.resolve().name,
        network_info=MappingProxyType(dict(info)),
        trt_info=MappingProxyType(dict(trt_info)),
        onnx_path=onnx_path,
        network_path=network_path,
        samplerate=samplerate,
        classes=classes,
        post=post,
        window_samples=window,
        max_batch=max_batch,
        opt_batch=opt_batch,
    )
