"""Full-size stand-ins (the published sizes), generated once and cached between runs."""

from __future__ import annotations

import filecmp
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from standin_checks import diffusion_jaw_projection, regression_jaw_projection
from standin_fixtures import VERSION_FILE

from a2f_standin import count_flops, generate
from a2f_volume.model_folder import ONNX_INPUTS, ONNX_OUTPUTS, load_model_folder

pytestmark = pytest.mark.slow

FullFolder = Callable[[str], Path]


def test_full_regression_has_published_sizes(standin_full: FullFolder) -> None:
    mf = load_model_folder(standin_full("regression"))
    spec = mf.regression
    assert spec is not None
    assert (spec.num_shapes_skin, spec.num_verts_skin) == (272, 61520)
    assert (spec.num_shapes_tongue, spec.num_verts_tongue) == (10, 5602)
    assert spec.result_size == 301 and spec.emotion_size == 26
    ident = mf.identity(None)
    assert ident.skin_pca is not None and ident.skin_pca.shape == (272, 184560)
    assert ident.skin_pca.dtype == np.float32 and ident.skin_pca.flags.c_contiguous
    assert ident.tongue_pca is not None and ident.tongue_pca.shape == (10, 16806)
    assert ident.skin.deltas.shape == (52, 184560) and ident.tongue.deltas.shape == (16, 16806)
    assert (mf.audio.buffer_len, mf.audio.buffer_ofs, mf.audio.samplerate) == (8320, 4160, 16000)


def test_full_diffusion_has_published_sizes(standin_full: FullFolder) -> None:
    mf = load_model_folder(standin_full("diffusion"))
    d = mf.diffusion
    assert d is not None
    assert (d.skin_size, d.tongue_size, d.jaw_size, d.eyes_size) == (72006, 16806, 15, 4)
    assert d.frame_size == 88831 and d.num_frames == 60
    assert (d.num_diffusion_steps, d.num_gru_layers, d.gru_latent_dim) == (2, 2, 256)
    assert [i.name for i in mf.identities] == ["Claire", "James", "Mark"]
    model = onnx.load(str(mf.onnx_path), load_external_data=False)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.input, *model.graph.output)
    }
    assert dims["noise"] == ["batch", 3, 60, 88831]
    assert dims["prediction"] == ["batch", 60, 88831]
    assert dims["input_latents"] == dims["output_latents"] == [2, 2, "batch", 256]
    assert set(dims) == set(ONNX_INPUTS["diffusion"]) | set(ONNX_OUTPUTS["diffusion"])


def test_full_flops_match_published_designs(standin_full: FullFolder) -> None:
    reg = count_flops(standin_full("regression") / "network.onnx", batch=1)
    dif = count_flops(standin_full("diffusion") / "network.onnx", batch=1)
    print(f"regression {reg / 1e6:.1f} MFLOP/frame, diffusion {dif / 1e9:.2f} GFLOP/inference")
    assert 20e6 <= reg <= 100e6
    assert 1e9 <= dif <= 10e9
    assert count_flops(standin_full("regression") / "network.onnx", batch=4) == 4 * reg


def test_full_regression_behaviour(standin_full: FullFolder) -> None:
    silent, quiet, loud = regression_jaw_projection(standin_full("regression"), [0.0, 0.03, 0.6])
    assert abs(silent) < 1e-6 and 0.0 < quiet < loud and loud > 0.5


def test_full_diffusion_behaviour(standin_full: FullFolder) -> None:
    proj, max_abs, noise_effect = diffusion_jaw_projection(standin_full("diffusion"), [0.0, 0.6])
    assert max_abs[0] < 0.01 and proj[1] > 0.5 and noise_effect > 0.0


def test_full_folders_are_cached(standin_full: FullFolder) -> None:
    folder = standin_full("diffusion")
    before = (folder / "network.onnx").stat().st_mtime_ns
    assert standin_full("diffusion") == folder
    assert (folder / "network.onnx").stat().st_mtime_ns == before
    assert (folder / VERSION_FILE).is_file()


def test_full_diffusion_is_byte_identical_for_the_seed(
    standin_full: FullFolder, tmp_path: Path
) -> None:
    cached = standin_full("diffusion")
    again = generate("diffusion", tmp_path / "again", size="full", seed=0)
    names = sorted(p.name for p in again.iterdir())
    assert names == sorted(p.name for p in cached.iterdir() if p.name != VERSION_FILE)
    match, mismatch, errors = filecmp.cmpfiles(cached, again, names, shallow=False)
    assert (mismatch, errors) == ([], []) and len(match) == len(names)
