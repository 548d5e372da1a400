"""The engine-builder's serving-graph step and the server loading what it published.

Real small stand-in folders on a real directory, the real ONNX Runtime backend, the real
server loader (``a2f_inference.server.model.load_model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
from a2f_engine.serving_plan import info_from_record
from a2f_engine_builder.backends import OnnxRuntimeBackend
from a2f_engine_builder.builder import EngineBuilder
from a2f_engine_builder.config import BuilderConfig
from a2f_engine_builder.metrics import BuilderMetrics
from a2f_engine_builder.serving import ServingComposer
from a2f_inference.audio import synthetic_speech
from a2f_inference.pipeline.offline import run_offline
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.engines import EngineChecker
from a2f_inference.server.model import load_model
from a2f_volume.engine_record import read_record
from a2f_volume.errors import InvalidArgumentError
from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths, hash_cache_path

from .helpers import make_model

ORT = "onnxruntime"


def _builder(root: Path, composer: ServingComposer) -> EngineBuilder:
    return EngineBuilder(root, OnnxRuntimeBackend(threads=1), HashCache(hash_cache_path(root)),
                         BuilderMetrics(CollectorRegistry()), composer)


def _record_info(folder: Path) -> Any:
    return info_from_record(read_record(ModelPaths(folder).engine_record(ORT)).serving_graph)


def _server_config(root: Path, **kw: object) -> ServerConfig:
    settings: dict[str, object] = {"engine_policy": "require-built", **kw}
    return ServerConfig.from_env({}, models_root=root, inference_workers=1, ort_threads=1,
                                 **settings)


def test_diffusion_engine_is_the_verified_serving_graph_and_the_server_serves_it(
        tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = make_model(root, "multi", "diffusion")
    out = _builder(root, ServingComposer("constant")).ensure(folder)
    assert out.result == "built", out.reason
    rec = read_record(ModelPaths(folder).engine_record(ORT))
    info = info_from_record(rec.serving_graph)
    assert info is not None and info.noise == "constant" and info.frames == 30
    assert rec.verification["compared"] is True
    assert rec.verification["worst_ratio"] <= 1.0
    engine = OnnxRuntimeEngine(ModelPaths(folder).engine(ORT), optimize=False)
    try:
        names = {s.name for s in engine.inputs}
        assert "noise" not in names and {"constant_noise", "face_mask_level"} <= names
        assert {s.name for s in engine.outputs} >= {"skin_upper", "tongue", "output_latents"}
    finally:
        engine.close()
    lm = load_model(folder, _server_config(root), engines=EngineChecker())
    try:
        assert lm.runtime.serving is not None and lm.runtime.serving.info.noise == "constant"
        frames = run_offline(lm.runtime, synthetic_speech(1.0, 16000, seed=2), 16000)
        assert frames and np.all(np.isfinite(np.stack([f.weights for f in frames])))
    finally:
        lm.close()


def test_noise_setting_change_and_plain_engines_are_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = make_model(root, "multi", "diffusion")
    assert _builder(root, ServingComposer(enabled=False)).ensure(folder).result == "built"
    assert _record_info(folder) is None  # an engine of the plain network (as built before)
    again = _builder(root, ServingComposer("constant")).ensure(folder)
    assert again.result == "built"  # not up to date: it is not the serving graph
    assert _record_info(folder).noise == "constant"
    same = _builder(root, ServingComposer("constant")).ensure(folder)
    assert same.result == "up_to_date"
    fresh = _builder(root, ServingComposer("constant,multi=fresh")).ensure(folder)
    assert fresh.result == "built"
    info = _record_info(folder)
    assert info.noise == "fresh" and info.resident_inputs == ("noise_pool",)
    # back to constant: the cached constant engine is reused (composition is in the key)
    back = _builder(root, ServingComposer("constant")).ensure(folder)
    assert back.result == "reused" and _record_info(folder).noise == "constant"


def test_regression_on_onnxruntime_keeps_the_plain_network(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = make_model(root, "mark", "regression")
    assert _builder(root, ServingComposer("fresh")).ensure(folder).result == "built"
    assert _record_info(folder) is None
    lm = load_model(folder, _server_config(root), engines=EngineChecker())
    try:
        assert lm.runtime.serving is None
    finally:
        lm.close()


def test_server_fallback_composes_with_the_configured_policy(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = make_model(root, "multi", "diffusion")
    config = _server_config(root, engine_policy="onnx-fallback",
                            diffusion_noise="constant,multi=fresh", diffusion_noise_seed=4)
    lm = load_model(folder, config, engines=EngineChecker())
    try:
        serving = lm.runtime.serving
        assert serving is not None and serving.info.noise == "fresh"
        assert serving.info.noise_seed == 4
        assert "noise_rows" in lm.runtime.input_specs
    finally:
        lm.close()


@pytest.mark.parametrize("spec", ["sometimes", "fresh,constant", "multi=", "=fresh"])
def test_bad_noise_settings_are_refused_naming_the_item(spec: str) -> None:
    with pytest.raises(InvalidArgumentError, match="noise"):
        ServerConfig.from_env({"A2F_INFERENCE_DIFFUSION_NOISE": spec})
    with pytest.raises(ValueError, match="diffusion_noise"):
        BuilderConfig(diffusion_noise=spec)


def test_noise_settings_from_the_environment() -> None:
    cfg = ServerConfig.from_env({"A2F_INFERENCE_DIFFUSION_NOISE": "fresh,mark=constant",
                                 "A2F_INFERENCE_DIFFUSION_NOISE_SEED": "9"})
    assert cfg.noise_policy("other") == "fresh" and cfg.noise_policy("mark") == "constant"
    assert cfg.diffusion_noise_seed == 9
    assert ServerConfig.from_env({}).noise_policy("any") == "constant"
