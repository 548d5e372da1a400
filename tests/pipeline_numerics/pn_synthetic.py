"""Small synthetic model folders (in memory) for the numerics tests.

They are built directly as :class:`a2f_volume.model_folder.ModelFolder` values with random
but well-conditioned geometry, so the numerics can be tested without files; the tests that
need real folder files use ``a2f_standin`` when it is available.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np

from a2f_standin.documents import MARK_CONFIG as STANDIN_MARK_CONFIG
from a2f_volume.model_folder import (
    ARKIT_SKIN_NPZ_KEYS,
    EMOTIONS,
    TONGUE_NAMES,
    AudioParams,
    BlendshapeParams,
    BlendshapeSet,
    DiffusionSpec,
    Identity,
    ModelFolder,
    RegressionSpec,
)

# Mark's published post-processing values, as the stand-ins write them, plus the blink offset
MARK_CONFIG = {**STANDIN_MARK_CONFIG, "blink_offset": 0.0}


def _pairs(names: tuple[str, ...], left: str, right: str) -> np.ndarray:
    """Pair ids for names ending in ``left`` / ``right`` with the same stem, else -1."""
    ids = np.full(len(names), -1, dtype=np.int64)
    nxt = 0
    for i, n in enumerate(names):
        if n.endswith(left):
            twin = n[: -len(left)] + right
            if twin in names:
                ids[i] = ids[names.index(twin)] = nxt
                nxt += 1
    return ids


def blendshape_set(
    rng: np.random.Generator, names: tuple[str, ...], n_verts: int, *,
    l1: float = 0.5, l2: float = 0.5, temporal: float = 0.3, symmetry: float = 100.0,
    cancel: bool = True, symmetric: bool = True, mask: bool = True, inactive: int = 1,
) -> BlendshapeSet:  # fmt: skip
    """A blendshape set with random deltas over a head-sized random neutral."""
    p = len(names)
    neutral = (rng.uniform(-1, 1, (n_verts, 3)) * np.array([9.0, 13.0, 10.5])).reshape(-1)
    deltas = rng.standard_normal((p, n_verts * 3)) * 0.3
    cancel_ids = np.full(p, -1, dtype=np.int64)
    if cancel and p >= 4:
        cancel_ids[0] = cancel_ids[2] = 0
    sym = _pairs(names, "Left", "Right") if symmetric else np.full(p, -1, dtype=np.int64)
    active = np.ones(p, dtype=bool)
    if inactive:
        active[p - inactive :] = False
    frontal = np.sort(rng.choice(n_verts, size=(n_verts * 3) // 4, replace=False)) if mask else None
    params = BlendshapeParams(
        l1=l1, l2=l2, temporal=temporal, symmetry=symmetry, template_bb_size=53.4505,
        active=active, cancel_pairs=cancel_ids, symmetry_pairs=sym,
        multipliers=np.ones(p, dtype=np.float32), offsets=np.zeros(p, dtype=np.float32),
    )  # fmt: skip
    return BlendshapeSet(
        pose_names=names, neutral=neutral.astype(np.float32), deltas=deltas.astype(np.float32),
        frontal_mask=frontal, params=params,
    )  # fmt: skip


def make_model(
    kind: str = "regression", n_verts: int = 400, n_tongue: int = 60, n_pca: int = 24,
    n_tongue_pca: int = 10, seed: int = 0,
) -> ModelFolder:  # fmt: skip
    """An in-memory model folder of ``kind`` with small sizes."""
    rng = np.random.default_rng(seed)
    skin = blendshape_set(rng, ARKIT_SKIN_NPZ_KEYS, n_verts)
    tongue = blendshape_set(
        rng, TONGUE_NAMES, n_tongue, l1=1.0, l2=3.5, temporal=5.0, symmetric=False, cancel=False,
        inactive=0,
    )  # fmt: skip
    skin_n = n_verts * 3
    tongue_n = n_tongue * 3
    regression = kind == "regression"
    ident = Identity(
        name="Mark", config=MappingProxyType(dict(MARK_CONFIG)),
        skin_neutral=(skin.neutral + rng.standard_normal(skin_n).astype(np.float32) * 0.01),
        tongue_neutral=tongue.neutral.copy(),
        jaw_neutral=rng.standard_normal(15).astype(np.float32),
        lip_open_delta=(rng.standard_normal(skin_n) * 0.2).astype(np.float32),
        eye_close_delta=(rng.standard_normal(skin_n) * 0.2).astype(np.float32),
        saccade=rng.standard_normal((5000, 2)).astype(np.float32),
        skin_pca=(rng.standard_normal((n_pca, skin_n)) * 0.1).astype(np.float32)
        if regression else None,
        tongue_pca=(rng.standard_normal((n_tongue_pca, tongue_n)) * 0.1).astype(np.float32)
        if regression else None,
        skin=skin, tongue=tongue,
    )  # fmt: skip
    reg = (
        RegressionSpec(
            implicit_emotion_len=16, implicit_emotion=np.zeros(16, dtype=np.float32),
            num_shapes_skin=n_pca, num_verts_skin=n_verts, num_shapes_tongue=n_tongue_pca,
            num_verts_tongue=n_tongue, result_jaw_size=15, result_eyes_size=4,
        )
        if regression else None
    )  # fmt: skip
    diff = (
        None if regression else DiffusionSpec(
            skin_size=skin_n, tongue_size=tongue_n, jaw_size=15, eyes_size=4,
            num_diffusion_steps=2, num_gru_layers=2, gru_latent_dim=256, left_truncate=15,
            right_truncate=15, center=30,
        )
    )  # fmt: skip
    return ModelFolder(
        path=Path("/nonexistent/synthetic"), name=f"synthetic-{kind}", kind=kind,  # type: ignore[arg-type]
        network_info=MappingProxyType({}), trt_info=MappingProxyType({}),
        onnx_path=Path("/nonexistent/network.onnx"), network_path=Path("/nonexistent/network.trt"),
        emotions=EMOTIONS, default_emotion=np.zeros(10, dtype=np.float32), identities=(ident,),
        audio=AudioParams(16000, 8320, 4160, 0, 0), regression=reg, diffusion=diff,
        max_batch=8, opt_batch=3,
    )  # fmt: skip
