"""The blendshape parts of a model folder: ``bs_*.npz`` pose sets and their solver configs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from a2f_volume.folder_parsing import (
    LoadContext,
    array_field,
    get_field,
    int_field,
    num_field,
    pair_array,
    short_value,
)
from a2f_volume.model_spec import (
    ARKIT_SKIN_NPZ_KEYS,
    BLENDSHAPE_PARAM_DEFAULTS,
    TONGUE_NAMES,
    BlendshapeParams,
    BlendshapeSet,
)


def blendshape_params(ctx: LoadContext, src: Path | None, n: int) -> BlendshapeParams:
    if src is None:
        bp: Mapping[str, Any] = {}
        cfg_src = Path("<defaults>")
    else:
        cfg_src = src
        doc = ctx.json(src)
        bp = get_field(ctx, src, doc, "blendshape_params")
        if not isinstance(bp, Mapping):
            raise ctx.fail(src, "blendshape_params", short_value(bp), "an object")
        if "numPoses" in bp:
            num = int_field(ctx, src, "blendshape_params.numPoses", bp["numPoses"])
            if num != n:
                raise ctx.fail(
                    src,
                    "blendshape_params.numPoses",
                    num,
                    f"{n} (poses in the blendshape npz, neutral excluded)",
                )

    def scalar(key: str) -> float:
        return num_field(ctx, cfg_src, "blendshape_params." + key,
                         bp.get(key, BLENDSHAPE_PARAM_DEFAULTS[key]))

    def vector(key: str, default: list[Any], kind: str) -> list[Any]:
        v = bp.get(key, default)
        if not isinstance(v, list) or len(v) != n:
            raise ctx.fail(
                cfg_src, "blendshape_params." + key, short_value(v), f"a list of {n} {kind}"
            )
        return v

    active_raw = vector("bsSolveActivePoses", [1] * n, "0/1 flags")
    active = np.array(
        [
            int_field(ctx, cfg_src, f"blendshape_params.bsSolveActivePoses[{i}]", x) != 0
            for i, x in enumerate(active_raw)
        ],
        dtype=bool,
    )
    cancel = pair_array(
        ctx,
        cfg_src,
        "blendshape_params.bsSolveCancelPoses",
        bp.get("bsSolveCancelPoses", [-1] * n),
        n,
    )
    sym = pair_array(
        ctx,
        cfg_src,
        "blendshape_params.bsSolveSymmetryPoses",
        bp.get("bsSolveSymmetryPoses", [-1] * n),
        n,
    )
    mult = np.array(
        [
            num_field(ctx, cfg_src, f"blendshape_params.bsWeightMultipliers[{i}]", x)
            for i, x in enumerate(vector("bsWeightMultipliers", [1.0] * n, "numbers"))
        ],
        dtype=np.float32,
    )
    offs = np.array(
        [
            num_field(ctx, cfg_src, f"blendshape_params.bsWeightOffsets[{i}]", x)
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


def blendshape_set(
    ctx: LoadContext,
    referrer: Path,
    field: str,
    entry: Any,
    which: Literal["skin", "tongue"],
    neutral_size: int,
) -> BlendshapeSet:
    if not isinstance(entry, Mapping):
        raise ctx.fail(referrer, field, short_value(entry), "an object {config, data}")
    data_path = ctx.resolve(
        referrer, field + ".data", get_field(ctx, referrer, entry, "data", field + ".")
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
    neutral = array_field(ctx, data_path, arrays, "neutral", neutral_size)
    deltas = np.empty((len(poses), neutral_size), dtype=np.float32)
    for i, p in enumerate(poses):
        deltas[i] = array_field(ctx, data_path, arrays, p, neutral_size)
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
    params = blendshape_params(ctx, cfg_path, len(poses))
    return BlendshapeSet(
        pose_names=poses, neutral=neutral, deltas=deltas, frontal_mask=mask, params=params
    )


def blendshape_pair(
    ctx: LoadContext, referrer: Path, field: str, entry: Any, skin_size: int, tongue_size: int
) -> tuple[BlendshapeSet, BlendshapeSet]:
    if not isinstance(entry, Mapping):
        raise ctx.fail(referrer, field, short_value(entry), "an object {skin, tongue}")
    skin = blendshape_set(
        ctx,
        referrer,
        field + ".skin",
        get_field(ctx, referrer, entry, "skin", field + "."),
        "skin",
        skin_size,
    )
    tongue = blendshape_set(
        ctx,
        referrer,
        field + ".tongue",
        get_field(ctx, referrer, entry, "tongue", field + "."),
        "tongue",
        tongue_size,
    )
    return skin, tongue
