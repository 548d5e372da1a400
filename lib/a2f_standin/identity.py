"""One stand-in identity: its meshes, pose deltas and the blendshape files it writes.

Also the deterministic array helpers the generator shares between kinds: the ``.npz``
writer with fixed zip timestamps, orthonormal bases and the saccade table.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2f_standin import mesh as M
from a2f_standin.documents import (
    SKIN_BS_PARAMS,
    SKIN_CANCEL,
    SKIN_SYMMETRIC,
    TONGUE_BS_PARAMS,
    TONGUE_CANCEL,
    bs_config,
)
from a2f_volume.model_folder import ARKIT_SKIN_NAMES, SACCADE_LEN, TONGUE_NAMES, npz_pose_key
from a2f_volume.publish import atomic_write_json, atomic_writer

IDENTITY_SCALES = {
    "Claire": (0.93, 0.95, 0.94),
    "James": (1.03, 1.01, 1.0),
    "Mark": (1.0, 1.03, 1.02),
}

#: Skin poses with a Left/Right twin, in the npz (lowerCamel) spelling.
SKIN_SYMMETRIC_KEYS = tuple(npz_pose_key(b) for b in SKIN_SYMMETRIC)

BlendshapePaths = dict[str, dict[str, str]]


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed .npz with fixed zip timestamps (byte-identical for same data)."""
    with atomic_writer(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(info, buf.getbuffer(), compress_type=zipfile.ZIP_STORED)


def orthonormal_rows(driven: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """[total, n]: rows spanning ``driven`` first (Gram-Schmidt order), random orthogonal fill."""
    k = driven.shape[0]
    fill = rng.standard_normal((total - k, driven.shape[1])).astype(np.float32)
    a = np.concatenate([driven.astype(np.float32), fill]).T  # [n, total]
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))[None, :]  # unique: positive projection on each driven vector
    return np.ascontiguousarray(q.T, dtype=np.float32)


def saccade(rng: np.random.Generator) -> np.ndarray:
    """Small eye jitter in degrees, [5000 * 2] (x, y per entry)."""
    steps = rng.standard_normal((SACCADE_LEN, 2)) * 0.15
    walk = np.cumsum(steps, axis=0)
    walk -= np.linspace(walk[0], walk[-1], SACCADE_LEN)  # loops back to the start
    return np.clip(walk, -3.0, 3.0).reshape(-1).astype(np.float32)


@dataclass
class Identity:
    """Geometry of one character: meshes, ARKit / tongue pose deltas and jaw anchors."""

    name: str
    skin: M.Mesh
    tongue: M.Mesh
    skin_poses: dict[str, np.ndarray]
    tongue_poses: dict[str, np.ndarray]
    jaw: np.ndarray


def make_identity(name: str, skin_verts: int, tongue_verts: int) -> Identity:
    """The identity ``name`` (one of :data:`IDENTITY_SCALES`) at the given vertex counts."""
    scale = IDENTITY_SCALES[name]
    skin = M.head_mesh(skin_verts, scale)
    tongue = M.tongue_mesh(tongue_verts, scale)
    return Identity(
        name,
        skin,
        tongue,
        M.skin_pose_deltas(skin),
        M.tongue_pose_deltas(tongue),
        M.jaw_anchors(scale),
    )


def write_blendshapes(out: Path, ident: Identity, suffix: str) -> BlendshapePaths:
    """Write ``bs_{skin,tongue}{suffix}.npz`` and their configs; return model.json's entry."""
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
    sym = [(b + "Left", b + "Right") for b in SKIN_SYMMETRIC_KEYS]
    atomic_write_json(
        out / f"bs_skin_config{suffix}.json",
        bs_config(
            skin_keys,
            SKIN_BS_PARAMS,
            sym,
            [(npz_pose_key(a), npz_pose_key(b)) for a, b in SKIN_CANCEL],
        ),
    )
    atomic_write_json(
        out / f"bs_tongue_config{suffix}.json",
        bs_config(TONGUE_NAMES, TONGUE_BS_PARAMS, [], list(TONGUE_CANCEL)),
    )
    return {
        "skin": {"config": f"bs_skin_config{suffix}.json", "data": f"bs_skin{suffix}.npz"},
        "tongue": {"config": f"bs_tongue_config{suffix}.json", "data": f"bs_tongue{suffix}.npz"},
    }
