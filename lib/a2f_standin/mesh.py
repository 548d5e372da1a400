"""Synthetic head, tongue and jaw geometry with localised ARKit / tongue pose deltas.

The head is an ellipsoid-ish point set (y up, face towards +z, character's left at +x) that
is exactly mirror-symmetric in x: vertex ``i`` of the first half mirrors vertex ``i + H``.
Pose deltas are smooth, localised bumps (JawOpen moves the lower face down, blinks move the
upper eyelid down on their side, smiles move the mouth corners up and out, ...); every
``*Right`` pose is the exact x-mirror of its ``*Left`` twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2f_volume.model_folder import ARKIT_SKIN_NAMES, TONGUE_NAMES

# Head half-axes (cm-like units; bbox diagonal ~50, close to templateBBSize 53.45).
HEAD_RADII = (9.0, 13.0, 10.5)
MOUTH_Y = -0.45  # mouth line, fraction of the y radius
EYE_X, EYE_Y = 0.36, 0.18


@dataclass(frozen=True)
class Mesh:
    """Vertex positions [N, 3] and the x-mirror permutation [N]."""

    verts: np.ndarray
    mirror: np.ndarray

    @property
    def flat(self) -> np.ndarray:
        return np.ascontiguousarray(self.verts.reshape(-1), dtype=np.float32)


def _symmetric_sphere(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors mirror-symmetric in x and the mirror permutation."""
    half = n // 2
    k = np.arange(half, dtype=np.float64) + 0.5
    y = 1.0 - 2.0 * k / half
    r = np.sqrt(np.clip(1.0 - y * y, 0.0, None))
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    x = np.abs(r * np.cos(phi))
    z = r * np.sin(phi)
    pos = np.stack([x, y, z], axis=1)
    parts = [pos, pos * np.array([-1.0, 1.0, 1.0])]
    mirror = [np.arange(half) + half, np.arange(half)]
    if n % 2:  # one vertex on the symmetry plane, mirrors itself
        parts.append(np.array([[0.0, 0.0, 1.0]]))
        mirror.append(np.array([2 * half]))
    return np.concatenate(parts), np.concatenate(mirror).astype(np.int64)


def head_mesh(n_verts: int, scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Mesh:
    """An ellipsoid-ish head with a narrower jaw, ``n_verts`` vertices."""
    unit, mirror = _symmetric_sphere(n_verts)
    rx, ry, rz = (HEAD_RADII[i] * scale[i] for i in range(3))
    v = unit * np.array([rx, ry, rz])
    jaw_taper = 1.0 - 0.18 * np.clip(-unit[:, 1], 0.0, 1.0)  # narrower towards the chin
    v[:, 0] *= jaw_taper
    v[:, 2] += (
        1.5
        * np.exp(-((unit[:, 0] / 0.15) ** 2 + ((unit[:, 1] + 0.05) / 0.2) ** 2))
        * (unit[:, 2] > 0)
    )  # a nose bump on the front
    return Mesh(v.astype(np.float32), mirror)


def tongue_mesh(n_verts: int, scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Mesh:
    """A flattened ellipsoid inside the mouth."""
    unit, mirror = _symmetric_sphere(n_verts)
    radii = np.array([2.2 * scale[0], 0.7 * scale[1], 3.0 * scale[2]])
    centre = np.array([0.0, MOUTH_Y * HEAD_RADII[1] * scale[1] - 1.0, 4.5 * scale[2]])
    return Mesh((unit * radii + centre).astype(np.float32), mirror)


def jaw_anchors(scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """5 jaw anchor points (chin, left/right jaw angle, left/right lower canine) -> [15]."""
    sx, sy, sz = scale
    pts = np.array(
        [
            [0.0, -12.0 * sy, 6.5 * sz],
            [6.5 * sx, -8.0 * sy, 1.0 * sz],
            [-6.5 * sx, -8.0 * sy, 1.0 * sz],
            [1.6 * sx, -7.0 * sy, 8.0 * sz],
            [-1.6 * sx, -7.0 * sy, 8.0 * sz],
        ]
    )
    return pts.reshape(-1).astype(np.float32)


#: Jaw anchor motion per unit of mouth opening (down and slightly back), [15].
JAW_OPEN_MOTION = np.array(
    [[0.0, -1.6, -0.4], [0.0, -0.5, 0.0], [0.0, -0.5, 0.0], [0.0, -1.2, -0.3], [0.0, -1.2, -0.3]],
    dtype=np.float32,
).reshape(-1)


# Skin pose regions: base name -> (centre x, centre y as radius fractions, radius, direction,
# amplitude). Left poses sit at +x; their Right twins are mirrored.
_SKIN_REGIONS: dict[str, tuple[float, float, float, tuple[float, float, float], float]] = {
    "EyeBlink": (EYE_X, EYE_Y + 0.05, 0.07, (0.0, -1.0, -0.1), 0.9),
    "EyeLookDown": (EYE_X, EYE_Y, 0.06, (0.0, -1.0, 0.0), 0.3),
    "EyeLookIn": (EYE_X, EYE_Y, 0.06, (-1.0, 0.0, 0.0), 0.3),
    "EyeLookOut": (EYE_X, EYE_Y, 0.06, (1.0, 0.0, 0.0), 0.3),
    "EyeLookUp": (EYE_X, EYE_Y, 0.06, (0.0, 1.0, 0.0), 0.3),
    "EyeSquint": (EYE_X, EYE_Y - 0.06, 0.07, (0.0, 1.0, 0.1), 0.5),
    "EyeWide": (EYE_X, EYE_Y + 0.08, 0.07, (0.0, 1.0, 0.0), 0.5),
    "JawForward": (0.0, -0.75, 0.3, (0.0, 0.0, 1.0), 0.8),
    "Jaw": (0.0, -0.75, 0.3, (1.0, 0.0, 0.0), 0.8),  # JawLeft / JawRight
    "MouthClose": (0.0, MOUTH_Y - 0.05, 0.1, (0.0, 1.0, 0.0), 0.6),
    "MouthFunnel": (0.0, MOUTH_Y, 0.1, (0.0, 0.0, 1.0), 0.6),
    "MouthPucker": (0.0, MOUTH_Y, 0.07, (0.0, 0.0, 1.0), 0.8),
    "Mouth": (0.0, MOUTH_Y, 0.1, (1.0, 0.0, 0.0), 0.6),  # MouthLeft / MouthRight
    "MouthSmile": (0.28, MOUTH_Y + 0.02, 0.08, (0.5, 0.8, -0.2), 0.8),
    "MouthFrown": (0.28, MOUTH_Y - 0.02, 0.08, (0.1, -1.0, 0.0), 0.6),
    "MouthDimple": (0.3, MOUTH_Y, 0.06, (0.4, 0.0, -0.4), 0.5),
    "MouthStretch": (0.28, MOUTH_Y - 0.03, 0.08, (0.8, -0.4, 0.0), 0.6),
    "MouthRollLower": (0.0, MOUTH_Y - 0.06, 0.08, (0.0, 0.3, -1.0), 0.4),
    "MouthRollUpper": (0.0, MOUTH_Y + 0.06, 0.08, (0.0, -0.3, -1.0), 0.4),
    "MouthShrugLower": (0.0, MOUTH_Y - 0.12, 0.1, (0.0, 1.0, 0.2), 0.4),
    "MouthShrugUpper": (0.0, MOUTH_Y + 0.08, 0.08, (0.0, 1.0, 0.0), 0.4),
    "MouthPress": (0.12, MOUTH_Y, 0.06, (0.0, 0.0, -1.0), 0.4),
    "MouthLowerDown": (0.12, MOUTH_Y - 0.06, 0.07, (0.0, -1.0, 0.0), 0.6),
    "MouthUpperUp": (0.12, MOUTH_Y + 0.06, 0.07, (0.0, 1.0, 0.0), 0.6),
    "BrowDown": (0.3, 0.4, 0.1, (0.0, -1.0, 0.0), 0.6),
    "BrowInnerUp": (0.0, 0.4, 0.1, (0.0, 1.0, 0.0), 0.6),
    "BrowOuterUp": (0.42, 0.4, 0.09, (0.0, 1.0, 0.0), 0.6),
    "CheekPuff": (0.42, -0.3, 0.12, (0.6, 0.0, 0.4), 0.7),
    "CheekSquint": (0.4, 0.02, 0.09, (0.0, 1.0, 0.0), 0.4),
    "NoseSneer": (0.1, -0.05, 0.06, (0.0, 1.0, 0.2), 0.4),
    "TongueOut": (0.0, MOUTH_Y - 0.02, 0.05, (0.0, -0.2, 1.0), 0.5),
}
_SYMMETRIC_BOTH_SIDES = {"CheekPuff"}  # one pose acting on both sides


def _frontness(unit_z: np.ndarray) -> np.ndarray:
    return np.clip(unit_z, 0.0, 1.0) ** 2


def _bump(mesh: Mesh, cx: float, cy: float, radius: float) -> np.ndarray:
    v = mesh.verts.astype(np.float64)
    rx, ry, _ = HEAD_RADII
    d2 = (v[:, 0] - cx * rx) ** 2 + (v[:, 1] - cy * ry) ** 2
    w = np.exp(-d2 / (2.0 * (radius * ry) ** 2)) * _frontness(v[:, 2] / np.abs(v[:, 2]).max())
    w[w < 1e-3] = 0.0  # strictly local
    if cx > 0.0:
        w[v[:, 0] <= 0.0] = 0.0  # a sided pose never crosses the midline
    return w


def _mirror(mesh: Mesh, delta: np.ndarray) -> np.ndarray:
    out = delta[mesh.mirror].copy()
    out[:, 0] *= -1.0
    return out


def _jaw_open(mesh: Mesh) -> np.ndarray:
    v = mesh.verts.astype(np.float64)
    ry = np.abs(v[:, 1]).max()
    below = (MOUTH_Y * ry - v[:, 1]) / (0.04 * ry)
    s = 1.0 / (1.0 + np.exp(-np.clip(below, -60, 60)))
    s *= _frontness(v[:, 2] / np.abs(v[:, 2]).max() + 0.3)
    s[s < 1e-3] = 0.0
    d = np.zeros_like(v)
    d[:, 1] = -2.0 * s
    d[:, 2] = -0.5 * s
    return d


def skin_pose_deltas(mesh: Mesh) -> dict[str, np.ndarray]:
    """The 52 ARKit pose deltas ([N, 3] float64) keyed by NIM name."""
    out: dict[str, np.ndarray] = {}
    for name in ARKIT_SKIN_NAMES:
        if name == "JawOpen":
            out[name] = _jaw_open(mesh)
            continue
        side = "Left" if name.endswith("Left") else "Right" if name.endswith("Right") else ""
        base = name[: len(name) - len(side)] if side else name
        cx, cy, radius, direction, amp = _SKIN_REGIONS[base]
        delta = _bump(mesh, cx, cy, radius)[:, None] * (amp * np.asarray(direction))
        if base in _SYMMETRIC_BOTH_SIDES:
            delta = delta + _mirror(mesh, delta)
        if side == "Right":
            delta = _mirror(mesh, delta)
        out[name] = delta
    return out


def tongue_pose_deltas(mesh: Mesh) -> dict[str, np.ndarray]:
    """The 16 tongue pose deltas ([T, 3] float64) keyed by npz name."""
    v = mesh.verts.astype(np.float64)
    c = v.mean(axis=0)
    p = v - c
    ext = np.abs(p).max(axis=0)
    tip = np.clip(p[:, 2] / ext[2], 0.0, 1.0) ** 2
    side = np.clip(p[:, 0] / ext[0], 0.0, 1.0)
    both_sides = np.abs(p[:, 0]) / ext[0]
    ones = np.ones(len(v))

    def d(w: np.ndarray, direction: tuple[float, float, float]) -> np.ndarray:
        return w[:, None] * np.asarray(direction, dtype=np.float64)

    left: dict[str, np.ndarray] = {
        "tongueTipUp": d(tip, (0.0, 0.8, 0.0)),
        "tongueTipDown": d(tip, (0.0, -0.8, 0.0)),
        "tongueTipLeft": d(tip, (0.8, 0.0, 0.0)),
        "tongueRollUp": d(both_sides, (0.0, 0.6, 0.0)),
        "tongueRollDown": d(both_sides, (0.0, -0.6, 0.0)),
        "tongueRollLeft": d(side, (0.0, 0.6, 0.0)),
        "tongueUp": d(ones, (0.0, 0.6, 0.0)),
        "tongueDown": d(ones, (0.0, -0.6, 0.0)),
        "tongueLeft": d(ones, (0.6, 0.0, 0.0)),
        "tongueIn": d(ones, (0.0, 0.0, -0.8)),
        "tongueStretch": d(tip, (0.0, 0.0, 1.2)),
        "tongueWide": p * np.array([0.25, 0.0, 0.0]),
        "tongueNarrow": p * np.array([-0.2, 0.0, 0.0]),
    }
    out: dict[str, np.ndarray] = {}
    for name in TONGUE_NAMES:
        if name in left:
            out[name] = left[name]
        else:  # a *Right pose: mirror of its *Left twin
            out[name] = _mirror(mesh, left[name[: -len("Right")] + "Left"])
    return out


def frontal_mask(mesh: Mesh) -> np.ndarray:
    """Indices of the front-facing vertices (the solve ignores the back of the head)."""
    z = mesh.verts[:, 2]
    return np.nonzero(z > 0.1 * np.abs(z).max())[0].astype(np.int32)


def eye_close_delta(skin: dict[str, np.ndarray]) -> np.ndarray:
    """Both upper eyelids fully down (used with eyelid_open_offset / blink_offset)."""
    return skin["EyeBlinkLeft"] + skin["EyeBlinkRight"]


def lip_open_delta(skin: dict[str, np.ndarray]) -> np.ndarray:
    """Lips parted without jaw motion (used with lip_open_offset)."""
    return 0.5 * (skin["MouthLowerDownLeft"] + skin["MouthLowerDownRight"]) + 0.3 * (
        skin["MouthUpperUpLeft"] + skin["MouthUpperUpRight"]
    )


def speech_drive(skin: dict[str, np.ndarray]) -> np.ndarray:
    """The skin delta a loud voiced frame produces at full activation: mostly JawOpen."""
    return (
        0.8 * skin["JawOpen"]
        + 0.15 * (skin["MouthLowerDownLeft"] + skin["MouthLowerDownRight"])
        + 0.1 * skin["MouthFunnel"]
    )


def tongue_drive(tongue: dict[str, np.ndarray]) -> np.ndarray:
    """The tongue delta at full activation (the tongue follows the jaw down a little)."""
    return 0.4 * tongue["tongueDown"] + 0.2 * tongue["tongueTipDown"]
