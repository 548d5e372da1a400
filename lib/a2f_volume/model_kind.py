"""Which family a model folder belongs to: a face model (Audio2Face-3D) or Audio2Emotion.

Both families ship ``model.json`` + ``network_info.json`` + ``network.onnx`` +
``trt_info.json``, so both are model folders for the volume, model-sync and the engine
builder. They differ in ``network_info.json``: a face model names its type under ``id``
(``{"id": {"type": "regression" | "diffusion", "output": "geometry"}, ...}``); an
Audio2Emotion (A2E) classifier has no ``id`` and lists its classes at the top level
(``{"audio_params": {"samplerate": 16000}, "emotions": ["angry", ...]}``).

This module only tells the two apart; :mod:`a2f_volume.model_folder` and
:mod:`a2f_volume.emotion_folder` load and check them. It imports neither, so both can use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

ModelFamily = Literal["face", "emotion"]


def is_emotion_network_info(info: Any) -> bool:
    """True for an Audio2Emotion ``network_info.json`` document (no ``id``, a class list)."""
    return (
        isinstance(info, Mapping)
        and "id" not in info
        and isinstance(info.get("emotions"), list)
        and isinstance(info.get("audio_params"), Mapping)
    )


def model_family(folder: str | os.PathLike[str]) -> ModelFamily:
    """``"emotion"`` when the folder's network info is an A2E one, else ``"face"``.

    Never raises: a folder whose files cannot be read is a ``"face"`` folder here, and the
    face loader then reports exactly what is wrong with it.
    """
    root = Path(folder)
    try:
        with open(root / "model.json", encoding="utf-8") as f:
            doc = json.load(f)
        rel = doc.get("networkInfoPath") if isinstance(doc, Mapping) else None
        if not isinstance(rel, str) or not rel:
            return "face"
        with open(root / rel, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return "face"
    return "emotion" if is_emotion_network_info(info) else "face"
