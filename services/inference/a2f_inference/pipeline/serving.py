"""The pipeline's side of a serving-graph engine (see ``docs/serving-graph.md``).

When a model version's engine runs the composed serving graph
(:mod:`a2f_engine.serving_graph`), the runtime holds one :class:`ServingGraph`:

* once per model version it sets the graph's resident inputs on the engine: the ``constant``
  noise tensor drawn from the noise seed, or the ``fresh`` policy's pool (nothing for
  regression); they are never stacked nor fed per window;
* per window, sessions add the stream's face mask parameters and, with ``fresh``, the pool
  rows and angles drawn from the stream's own generator (:meth:`ServingGraph.window_feeds`:
  a few hundred numbers, never the noise tensor itself);
* after inference, the item's outputs are already the kept frames projected onto the
  identity's active poses (:meth:`ServingGraph.projections`), which post-processing takes
  through :func:`~a2f_inference.pipeline.postprocess.process_streams_projected`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from a2f_engine.base import Engine
from a2f_engine.noise import draw_pool_mix
from a2f_engine.serving_graph import ServingGraphInfo, resident_inputs
from a2f_volume.errors import ModelFolderError
from a2f_volume.model_folder import ModelFolder

from .params import FaceParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Projected:
    """One item's post-processing input from a serving graph: ``skin`` ``[F, 2 Pa]`` (upper
    then lower half) and ``tongue`` ``[F, Pt]``, float32."""

    skin: np.ndarray
    tongue: np.ndarray


class ServingGraph:
    """The serving graph ``info`` running in ``engine`` for ``folder``; sets its resident
    inputs (``noise_seed``: the seed of the constant noise or of the pool)."""

    def __init__(self, folder: ModelFolder, engine: Engine, info: ServingGraphInfo,
                 noise_seed: int) -> None:
        if info.kind != folder.kind:
            raise ModelFolderError(str(folder.path), "serving graph kind", info.kind,
                                   folder.kind)
        if len(info.skin_poses) != len(folder.identities):
            raise ModelFolderError(str(folder.path), "serving graph identities",
                                   len(info.skin_poses), str(len(folder.identities)))
        self.info = replace(info, noise_seed=int(noise_seed))
        self.resident = frozenset(info.resident_inputs)
        for name, value in resident_inputs(self.info).items():
            engine.set_resident_input(name, value)
        self.fresh_pool = "noise_pool" in self.resident
        logger.info("serving graph of %s: noise %s (seed %d), resident inputs %s, outputs %s",
                    folder.name, info.noise or "-", self.info.noise_seed,
                    sorted(self.resident) or "none", ", ".join(info.outputs))

    def window_feeds(self, face: FaceParams, rng: np.random.Generator | None, count: int,
                     out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The per-window inputs the graph adds for ``count`` windows of one stream: its face
        mask parameters (written into ``out``'s views when given) and, with the ``fresh``
        pool, the rows and angles drawn from ``rng``."""
        feeds: dict[str, np.ndarray] = {}
        for name, value in (("face_mask_level", face.face_mask_level),
                            ("face_mask_softness", face.face_mask_softness)):
            buf = out.get(name) if out is not None else None
            arr = buf[:count] if buf is not None and buf.shape[1:] == () else np.empty(
                count, dtype=np.float32)
            arr[:] = value
            feeds[name] = arr
        if self.fresh_pool:
            if rng is None:
                raise ValueError("a fresh-noise serving graph needs the stream's generator")
            steps_1, frames = self.info.noise_shape[0], self.info.noise_shape[1]
            rows, mix = draw_pool_mix(rng, count, steps_1, frames, self.info.pool_rows)
            feeds["noise_rows"], feeds["noise_mix"] = rows, mix
        return feeds

    def projections(self, outputs: Mapping[str, np.ndarray], identity_index: int, lo: int,
                    hi: int) -> Projected:
        """Frames ``lo:hi`` of a one-stream slice of the outputs (diffusion: one window,
        ``[1, F, .]``; regression: ``[n, 1, .]``, ``lo:hi`` over the n windows)."""
        pa = self.info.skin_poses[identity_index]
        pt = self.info.tongue_poses[identity_index]

        def frames(name: str, width: int) -> np.ndarray:
            arr = np.asarray(outputs[name])
            flat = arr.reshape(-1, arr.shape[-1])  # [windows x frames, P]
            return flat[lo:hi, :width]

        skin = np.concatenate([frames("skin_upper", pa), frames("skin_lower", pa)], axis=1)
        return Projected(np.ascontiguousarray(skin, dtype=np.float32),
                         np.ascontiguousarray(frames("tongue", pt), dtype=np.float32))
