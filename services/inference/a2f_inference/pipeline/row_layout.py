"""Where skin, tongue, jaw and eyes sit in one network output row, and the shapes of the
diffusion network's per-stream state and noise inputs.

* regression ``result`` rows: ``[skin PCA coefficients, tongue PCA coefficients, jaw, eyes]``;
* diffusion ``prediction`` rows: ``[skin deltas, tongue deltas, jaw, eyes]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2f_volume.errors import InvalidArgumentError
from a2f_volume.model_folder import ModelFolder


@dataclass(frozen=True)
class RowLayout:
    """Where skin, tongue, jaw and eyes sit in one network output row."""

    skin: slice
    tongue: slice
    jaw: slice
    eyes: slice
    size: int

    @classmethod
    def of(cls, model: ModelFolder) -> RowLayout:
        if model.regression is not None:
            r = model.regression
            sizes = (r.num_shapes_skin, r.num_shapes_tongue, r.result_jaw_size, r.result_eyes_size)
        elif model.diffusion is not None:
            d = model.diffusion
            sizes = (d.skin_size, d.tongue_size, d.jaw_size, d.eyes_size)
        else:  # pragma: no cover - ModelFolder always has one
            raise InvalidArgumentError(f"model {model.name!r} has no network spec")
        ends = np.cumsum(sizes).tolist()
        starts = [0, *ends[:-1]]
        s = [slice(a, b) for a, b in zip(starts, ends, strict=True)]
        return cls(s[0], s[1], s[2], s[3], int(ends[-1]))


def diffusion_shapes(folder: ModelFolder) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(latent shape, noise shape)`` of one diffusion stream (empty for regression)."""
    d = folder.diffusion
    if folder.kind != "diffusion" or d is None:
        return (), ()
    return ((d.num_diffusion_steps, d.num_gru_layers, 1, d.gru_latent_dim),
            (1, d.num_diffusion_steps + 1, d.num_frames, d.frame_size))
