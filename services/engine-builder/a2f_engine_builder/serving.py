"""The serving-graph step of a build: which models get one, composing, verifying, recording.

For a model served through its serving graph on this backend
(:func:`a2f_engine.serving_plan.uses_serving_graph`: diffusion on both backends, regression
on TensorRT only), the builder composes the graph (:mod:`a2f_engine.serving_graph`) with
the noise policy its ``diffusion_noise`` setting names for the model, builds *that* for the
backend (TensorRT: with :func:`~a2f_engine.serving_build.serving_build_spec`), verifies the
engine with :func:`~a2f_engine.serving_verify.verify_serving_graph` against the unmodified
``network.onnx`` plus the NumPy post-processing products, and records the graph's
description in the engine record (``serving_graph``), which tells the server to serve it as
such. The composition is part of the engine cache key (:meth:`ServingComposer.cache_key`),
and an engine whose composition differs from the one wanted (an engine of the plain network
built before, or another noise policy) is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from a2f_engine.base import Engine
from a2f_engine.noise import NoisePolicy, parse_noise_policies, policy_for
from a2f_engine.serving_graph import ServingGraphInfo, info_path
from a2f_engine.serving_plan import (
    compose_for,
    info_from_record,
    serving_key,
    uses_serving_graph,
    wanted_key,
)
from a2f_engine.serving_verify import verify_serving_graph
from a2f_volume.engine_record import EngineRecord
from a2f_volume.errors import A2FError
from a2f_volume.model_folder import ModelFolder, load_model_folder
from a2f_volume.model_kind import model_family

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingPlan:
    """A model that is built as a serving graph, with the noise policy it gets."""

    model: ModelFolder
    noise: NoisePolicy
    key: str  # :func:`a2f_engine.serving_plan.serving_key` of the wanted graph


@dataclass(frozen=True)
class ServingCheck:
    """The verification of a serving-graph engine, in the record's terms."""

    max_abs_error: float
    worst_ratio: float
    atol: float
    rtol: float
    batches: tuple[int, ...]
    errors: dict[str, float]
    compared: bool

    def to_json(self) -> dict[str, object]:
        return {"max_abs_error": self.max_abs_error, "worst_ratio": self.worst_ratio,
                "atol": self.atol, "rtol": self.rtol, "batches": list(self.batches),
                "errors": dict(self.errors), "compared": self.compared,
                "reference": "onnxruntime on network.onnx, optimisations disabled, then "
                             "the post-processing products in float64 NumPy"}


class ServingComposer:
    """The builder's serving-graph decisions for one backend (``noise``: the
    ``diffusion_noise`` setting, e.g. ``fresh,mark-v3=constant``; ``seed``: the seed used for
    verification, the server draws its own resident noise from its own seed)."""

    def __init__(self, noise: str = "constant", seed: int = 0, enabled: bool = True) -> None:
        self.default, self.overrides = parse_noise_policies(noise)
        self.seed = int(seed)
        self.enabled = enabled

    def plan(self, folder: Path, backend: str, name: str) -> ServingPlan | None:
        """The serving graph ``name`` (at ``folder``) gets on ``backend``; None: the plain
        network."""
        if not self.enabled or model_family(folder) != "face":
            return None
        try:
            model = load_model_folder(folder)
        except (A2FError, OSError, ValueError) as err:  # the plain build reports it
            logger.debug("%s: no serving graph: %s", name, err)
            return None
        if not uses_serving_graph(model.kind, backend):
            return None
        noise = policy_for(name, self.default, self.overrides)
        return ServingPlan(model, noise, wanted_key(model.kind, noise))

    def accepts(self, record: EngineRecord, plan: ServingPlan | None) -> bool:
        """Whether ``record``'s engine is the composition ``plan`` wants."""
        try:
            info = info_from_record(record.serving_graph)
        except ValueError:
            return False
        if plan is None:
            return info is None
        return info is not None and serving_key(info) == plan.key

    @staticmethod
    def cache_key(onnx_sha: str, plan: ServingPlan | None) -> str:
        """The engine cache key: the ONNX hash, mixed with the composition when there is one."""
        if plan is None:
            return onnx_sha
        return hashlib.sha256(f"{onnx_sha}:{plan.key}".encode()).hexdigest()

    def compose(self, plan: ServingPlan, out: Path) -> ServingGraphInfo:
        logger.info("%s: composing the serving graph (%s, noise %s)", plan.model.name,
                    plan.model.kind, plan.noise)
        return compose_for(plan.model, out, plan.noise, self.seed)

    @staticmethod
    def remove(graph: Path) -> None:
        """Remove a composed graph and its description."""
        for p in (graph, info_path(graph)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    def verify(self, engine: Engine, plan: ServingPlan, info: ServingGraphInfo,
               precision: str) -> ServingCheck:
        v = verify_serving_graph(engine, plan.model, info, precision=precision,
                                 seed=self.seed)
        return ServingCheck(max(v.errors.values(), default=0.0), v.worst_ratio, v.atol, v.rtol,
                            v.batches, dict(v.errors), v.compared)
