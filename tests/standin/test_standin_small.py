"""Small stand-in folders: structure, ONNX interface, determinism, geometry and behaviour."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from standin_checks import (
    REGRESSION_FILES,
    diffusion_files,
    diffusion_jaw_projection,
    regression_jaw_projection,
)

from a2f_standin import count_flops, generate
from a2f_volume.layout import is_temp_name
from a2f_volume.model_folder import (
    ARKIT_SKIN_NAMES,
    ONNX_INPUTS,
    ONNX_OUTPUTS,
    TONGUE_NAMES,
    load_model_folder,
    npz_pose_key,
)


def test_small_regression_loads_with_declared_sizes(small_regression: Path) -> None:
    mf = load_model_folder(small_regression)
    assert mf.kind == "regression" and mf.regression is not None and mf.diffusion is None
    assert sorted(p.name for p in small_regression.iterdir()) == sorted(REGRESSION_FILES)
    spec = mf.regression
    (ident,) = mf.identities
    assert ident.name == "Mark" and mf.identity(None) is ident and mf.identity("mark") is ident
    assert ident.skin_pca is not None and ident.skin_pca.shape == (
        spec.num_shapes_skin,
        spec.num_verts_skin * 3,
    )
    assert ident.skin.neutral.shape == ident.skin_neutral.shape
    assert ident.skin.pose_names == tuple(npz_pose_key(n) for n in ARKIT_SKIN_NAMES)
    assert ident.tongue.pose_names == TONGUE_NAMES
    assert ident.config["input_strength"] == pytest.approx(1.3)
    assert ident.config["blink_offset"] == 0.0
    assert spec.implicit_emotion.shape == (16,)
    assert spec.result_size == spec.num_shapes_skin + spec.num_shapes_tongue + 19
    assert mf.network_path.name == "network.trt" and mf.onnx_path.is_file()
    assert (mf.max_batch, mf.opt_batch) == (128, 10)


def test_small_diffusion_loads_three_identities(small_diffusion: Path) -> None:
    mf = load_model_folder(small_diffusion / "model.json")
    assert mf.kind == "diffusion" and mf.diffusion is not None and mf.regression is None
    assert sorted(p.name for p in small_diffusion.iterdir()) == sorted(diffusion_files())
    assert [i.name for i in mf.identities] == ["Claire", "James", "Mark"]
    d = mf.diffusion
    assert d.num_frames == 60 and d.frame_size == d.skin_size + d.tongue_size + 19
    for ident in mf.identities:
        assert ident.skin_neutral.shape == (d.skin_size,)
        assert ident.skin.deltas.shape == (52, d.skin_size)
        assert ident.skin_pca is None and ident.saccade.shape == (5000, 2)
    # identities differ in geometry
    assert not np.allclose(mf.identities[0].skin_neutral, mf.identities[2].skin_neutral)
    assert (mf.max_batch, mf.opt_batch) == (8, 3)


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_onnx_passes_checker_with_reference_interface(kind: str, tmp_path: Path) -> None:
    folder = generate(kind, tmp_path / kind)
    model = onnx.load(str(folder / "network.onnx"))
    onnx.checker.check_model(model, full_check=True)
    ins = {i.name: i.type.tensor_type for i in model.graph.input}
    outs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert {n: len(t.shape.dim) for n, t in ins.items()} == dict(ONNX_INPUTS[kind])
    assert {n: len(t.shape.dim) for n, t in outs.items()} == dict(ONNX_OUTPUTS[kind])
    for t in (*ins.values(), *outs.values()):
        assert t.elem_type == onnx.TensorProto.FLOAT
    batch_axis = {"input_latents": 2, "output_latents": 2}
    for name, t in (*ins.items(), *outs.items()):
        assert t.shape.dim[batch_axis.get(name, 0)].dim_param == "batch", name
    if kind == "regression":
        assert model.opset_import[0].version == 14


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_same_seed_gives_identical_bytes(kind: str, tmp_path: Path) -> None:
    a = generate(kind, tmp_path / "a", seed=3)
    b = generate(kind, tmp_path / "b", seed=3)
    c = generate(kind, tmp_path / "c", seed=4)
    names = sorted(p.name for p in a.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(names)
    assert not filecmp.cmp(a / "network.onnx", c / "network.onnx", shallow=False)


def test_generation_leaves_no_temp_files(tmp_path: Path) -> None:
    folder = generate("diffusion", tmp_path / "d")
    assert not [p for p in folder.iterdir() if is_temp_name(p.name)]


def test_count_flops_of_known_graph() -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    k = numpy_helper.from_array(np.ones((2, 1, 5), np.float32), "k")
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("Conv", ["s", "k"], ["c"], kernel_shape=[5], strides=[1]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 1, 20]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", 2, 16]),
        ],
        initializer=[w, k],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    # MatMul: 2*3*4 = 24; Conv: 2 * (2*16) * (1*5) = 320; per batch row
    assert count_flops(model, batch=1) == 24 + 320
    assert count_flops(model, batch=2) == 2 * (24 + 320)


def test_pose_deltas_are_localised_and_mirrored(small_regression: Path) -> None:
    ident = load_model_folder(small_regression).identity(None)
    v = ident.skin.neutral.reshape(-1, 3)
    names = ident.skin.pose_names

    def delta(name: str) -> np.ndarray:
        return ident.skin.deltas[names.index(name)].reshape(-1, 3)

    jaw = delta("jawOpen")
    moved = np.linalg.norm(jaw, axis=1) > 1e-3
    assert 0 < moved.mean() < 0.5  # local
    assert (jaw[moved, 1] < 0).all()  # down
    assert v[moved, 1].max() < 0.0  # lower face only
    blink = delta("eyeBlinkLeft")
    bm = np.linalg.norm(blink, axis=1) > 1e-3
    assert 0 < bm.mean() < 0.1 and (blink[bm, 1] < 0).all()
    assert (v[bm, 0] > 0).all() and (v[bm, 1] > 0).all()  # character's left (+x), upper face
    smile = delta("mouthSmileLeft")
    sm = np.linalg.norm(smile, axis=1) > 1e-3
    assert (smile[sm, 1] > 0).all() and (smile[sm, 0] > 0).all()  # up and out
    # right twin = x-mirror of left: same sorted |dx|, dy, dz sums, opposite dx sign
    right = delta("mouthSmileRight")
    np.testing.assert_allclose(right[:, 1].sum(), smile[:, 1].sum(), rtol=1e-5)
    np.testing.assert_allclose(right[:, 0].sum(), -smile[:, 0].sum(), rtol=1e-5)
    np.testing.assert_allclose(
        np.sort(v[np.linalg.norm(right, axis=1) > 1e-3, 0]),
        np.sort(-v[sm, 0]),
        rtol=1e-5,
        atol=1e-5,
    )
    assert ident.skin.frontal_mask is not None
    assert (v[ident.skin.frontal_mask, 2] > 0).all()


def test_regression_basis_represents_driven_poses(small_regression: Path) -> None:
    ident = load_model_folder(small_regression).identity(None)
    assert ident.skin_pca is not None
    b = ident.skin_pca.astype(np.float64)
    np.testing.assert_allclose(b @ b.T, np.eye(len(b)), atol=1e-5)
    jaw = ident.skin.deltas[ident.skin.pose_names.index("jawOpen")].astype(np.float64)
    residual = jaw - (b @ jaw) @ b
    assert np.linalg.norm(residual) < 1e-4 * np.linalg.norm(jaw)


def test_regression_silence_is_neutral_and_loudness_opens_jaw(small_regression: Path) -> None:
    silent, quiet, mid, loud = regression_jaw_projection(small_regression, [0.0, 0.02, 0.1, 0.6])
    assert abs(silent) < 1e-6
    assert 0.0 < quiet < mid < loud
    assert loud > 0.5


def test_diffusion_silence_is_neutral_loudness_opens_jaw_and_noise_matters(
    small_diffusion: Path,
) -> None:
    proj, max_abs, noise_effect = diffusion_jaw_projection(small_diffusion, [0.0, 0.02, 0.1, 0.6])
    assert max_abs[0] < 0.01 and abs(proj[0]) < 0.01
    assert proj[1] < proj[2] < proj[3] and proj[3] > 0.5
    assert noise_effect > 0.0


def test_cli_writes_a_loadable_folder(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, "-m", "a2f_standin.cli", "regression", "--out", str(out), "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert "regression stand-in: done" in run.stderr
    assert load_model_folder(out).kind == "regression"


def test_cli_rejects_unknown_kind(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "a2f_standin.cli", "gan", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and "invalid choice" in run.stderr


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind 'gan' unknown"):
        generate("gan", tmp_path)
    with pytest.raises(ValueError, match="size 'huge' unknown"):
        generate("regression", tmp_path, size="huge")


def test_silence_with_config_offsets_solves_to_near_zero_weights(small_regression: Path) -> None:
    """The neutral face plus the eyelid/lip offsets of the config stays under 0.05 per pose."""
    from scipy.optimize import lsq_linear

    ident = load_model_folder(small_regression).identity(None)
    bs, c = ident.skin, ident.config
    assert bs.frontal_mask is not None
    target = ident.eye_close_delta * -c["eyelid_open_offset"]
    target = target + ident.lip_open_delta * c["lip_open_offset"]
    rows = bs.frontal_mask
    a = bs.deltas.reshape(len(bs.pose_names), -1, 3)[:, rows].reshape(len(bs.pose_names), -1).T
    d = target.reshape(-1, 3)[rows].reshape(-1)
    # the regularised normal equations of the reference solve (temporal/symmetry terms off)
    a = a.astype(np.float64)
    p = bs.params
    v = bs.neutral.reshape(-1, 3)
    s = (np.linalg.norm(v.max(axis=0) - v.min(axis=0)) / p.template_bb_size) ** 2
    n = a.shape[1]
    m = a.T @ a + p.l1**2 * 0.25 * s * np.ones((n, n)) + p.l2 * 10.0 * s * np.eye(n)
    chol = np.linalg.cholesky(m)
    rhs = np.linalg.solve(chol, a.T @ d.astype(np.float64))
    weights = lsq_linear(chol.T, rhs, bounds=(0.0, 1.0)).x
    assert weights.max() < 0.05
    assert np.abs(target).max() > 0.01  # the offsets do move the face a little
