"""Face geometry of post-processing: the face mask, the jaw's rigid transform, the eyes'
rotations with their saccades."""

from __future__ import annotations

import numpy as np

from a2f_inference.pipeline.params import FaceParams
from a2f_volume.model_folder import SACCADE_LEN

#: Saccade table frame rate (index = seed + time * 30).
SACCADE_FPS = 30.0


def face_mask(neutral_skin: np.ndarray, level: float, softness: float) -> np.ndarray:
    """Per-vertex lower-face weight: ``sigmoid((level - y_norm) / softness)`` ([V], float64).

    ``y_norm`` is the neutral's y mapped to [0, 1]; 1 means lower face, 0 upper face.
    """
    y = np.asarray(neutral_skin, dtype=np.float64).reshape(-1, 3)[:, 1]
    span = float(y.max() - y.min())
    yn = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    z = (level - yn) / max(softness, 1e-12)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free sigmoid


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Best rigid transform (Kabsch, no scale) mapping points ``src`` [K,3] onto ``dst``;
    returns a 4x4 matrix ``T`` with ``dst ≈ (T @ [src, 1]ᵀ)[:3]``."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    h = (src - cs).T @ (dst - cd)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = cd - r @ cs
    return t


def saccade_index(seed: float, time_s: np.ndarray) -> np.ndarray:
    """``(seed + time * 30) mod 5000`` as integer rows of the saccade table."""
    idx = np.floor(seed + np.asarray(time_s, dtype=np.float64) * SACCADE_FPS).astype(np.int64)
    return np.mod(idx, SACCADE_LEN)


def eye_rotations(
    eyes: np.ndarray, times_s: np.ndarray, face: FaceParams, saccade: np.ndarray
) -> np.ndarray:
    """``[F, 4]`` eye values (rX, rY, lX, lY) -> rotations: offset + strength * value +
    saccade_strength * saccade[index]; the saccade's (x, y) applies to both eyes."""
    e = np.atleast_2d(np.asarray(eyes, dtype=np.float64))
    sac = np.asarray(saccade, dtype=np.float64)[saccade_index(face.eye_saccade_seed, times_s)]
    offs = np.array(
        [face.right_eye_rot_x_offset, face.right_eye_rot_y_offset,
         face.left_eye_rot_x_offset, face.left_eye_rot_y_offset]
    )  # fmt: skip
    return offs + face.eyeballs_strength * e + face.saccade_strength * np.tile(sac, (1, 2))


def jaw_transforms(jaw: np.ndarray, neutral_jaw: np.ndarray, face: FaceParams) -> np.ndarray:
    """``[F, 15]`` jaw rows -> ``[F, 4, 4]`` rigid transforms of the lower teeth."""
    j = np.atleast_2d(np.asarray(jaw, dtype=np.float64)).reshape(-1, 5, 3)
    neutral = np.asarray(neutral_jaw, dtype=np.float64).reshape(5, 3)
    offset = np.array([0.0, face.lower_teeth_height_offset, face.lower_teeth_depth_offset])
    pts = j * face.lower_teeth_strength + offset + neutral
    return np.stack([rigid_fit(neutral, p) for p in pts]) if len(pts) else np.zeros((0, 4, 4))
