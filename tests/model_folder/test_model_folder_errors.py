"""Each way a model folder can be broken gives its own precise ModelFolderError."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from a2f_standin.generate import write_npz
from a2f_volume.errors import ModelFolderError, NotFoundError
from a2f_volume.model_folder import check_onnx_interface, load_model_folder


def edit_json(path: Path, change: Callable[[Any], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def edit_npz(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    write_npz(path, arrays)


def load_error(folder: Path) -> ModelFolderError:
    with pytest.raises(ModelFolderError) as info:
        load_model_folder(folder)
    return info.value


def test_missing_file_names_the_referring_field(small_regression: Path) -> None:
    (small_regression / "bs_tongue.npz").unlink()
    err = load_error(small_regression)
    assert err.path.endswith("model.json")
    assert err.field == "blendshapePaths.tongue.data"
    assert "bs_tongue.npz" in str(err.found)


def test_missing_model_json(tmp_path: Path) -> None:
    err = load_error(tmp_path)
    assert err.path.endswith("model.json") and err.found == "missing file"


def test_wrong_id_type(small_regression: Path) -> None:
    edit_json(small_regression / "network_info.json", lambda d: d["id"].update(type="gan"))
    err = load_error(small_regression)
    assert (err.field, err.found) == ("id.type", "gan")
    assert err.path.endswith("network_info.json") and "regression" in err.expected


def test_wrong_id_output(small_diffusion: Path) -> None:
    edit_json(small_diffusion / "network_info.json", lambda d: d["id"].update(output="blendshapes"))
    err = load_error(small_diffusion)
    assert (err.field, err.found, err.expected) == ("id.output", "blendshapes", "'geometry'")


def test_size_mismatch_between_network_info_and_data(small_regression: Path) -> None:
    edit_json(
        small_regression / "network_info.json",
        lambda d: d["params"].update(num_verts_skin=d["params"]["num_verts_skin"] + 1),
    )
    err = load_error(small_regression)
    assert err.path.endswith("model_data.npz") and err.field == "shapes_matrix_skin"
    assert "shape" in str(err.found) and "shape" in err.expected


def test_diffusion_skin_size_mismatch(small_diffusion: Path) -> None:
    edit_json(
        small_diffusion / "network_info.json",
        lambda d: d["params"].update(skin_size=d["params"]["skin_size"] - 3),
    )
    err = load_error(small_diffusion)
    assert err.path.endswith("bs_skin_Claire.npz") or err.path.endswith("model_data_Claire.npz")


def test_list_length_mismatch_vs_identities(small_diffusion: Path) -> None:
    edit_json(small_diffusion / "model.json", lambda d: d["modelDataPaths"].pop())
    err = load_error(small_diffusion)
    assert err.field == "modelDataPaths" and err.found == "2 entries"
    assert "3 entries" in err.expected and "Claire" in err.expected


def test_unknown_pose_name(small_regression: Path) -> None:
    def rename(a: dict[str, np.ndarray]) -> None:
        names = a["poseNames"].tolist()
        names[5] = "eyeRollLeft"
        a["poseNames"] = np.array(names)
        a["eyeRollLeft"] = a.pop("eyeSquintLeft")

    edit_npz(small_regression / "bs_skin.npz", rename)
    err = load_error(small_regression)
    assert err.path.endswith("bs_skin.npz")
    assert (err.field, err.found) == ("poseNames[5]", "eyeRollLeft")
    assert "ARKit" in err.expected


def test_num_poses_mismatch(small_regression: Path) -> None:
    edit_json(
        small_regression / "bs_tongue_config.json",
        lambda d: d["blendshape_params"].update(numPoses=15),
    )
    err = load_error(small_regression)
    assert err.path.endswith("bs_tongue_config.json")
    assert (err.field, err.found) == ("blendshape_params.numPoses", 15)
    assert err.expected.startswith("16")


def test_pair_id_appearing_once(small_regression: Path) -> None:
    def break_pair(d: Any) -> None:
        cancel = d["blendshape_params"]["bsSolveCancelPoses"]
        cancel[cancel.index(0)] = -1  # pair 0 keeps one member only

    edit_json(small_regression / "bs_skin_config.json", break_pair)
    err = load_error(small_regression)
    assert err.field == "blendshape_params.bsSolveCancelPoses"
    assert "pair id 0 appearing 1" in str(err.found) and "exactly twice" in err.expected


def test_pair_array_length(small_diffusion: Path) -> None:
    edit_json(
        small_diffusion / "bs_skin_config_James.json",
        lambda d: d["blendshape_params"]["bsSolveSymmetryPoses"].pop(),
    )
    err = load_error(small_diffusion)
    assert err.path.endswith("bs_skin_config_James.json")
    assert err.field == "blendshape_params.bsSolveSymmetryPoses"


def _edit_onnx(path: Path, change: Callable[[onnx.ModelProto], None]) -> None:
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))


def test_onnx_tensor_name_wrong(small_regression: Path) -> None:
    def rename(m: onnx.ModelProto) -> None:
        m.graph.input[1].name = "emotions"
        for node in m.graph.node:
            for i, name in enumerate(node.input):
                if name == "emotion":
                    node.input[i] = "emotions"

    _edit_onnx(small_regression / "network.onnx", rename)
    err = load_error(small_regression)
    assert err.path.endswith("network.onnx") and err.field == "graph.input"
    assert err.found == ["input", "emotions"] and "emotion" in err.expected


def test_onnx_rank_wrong(small_diffusion: Path) -> None:
    def drop_dim(m: onnx.ModelProto) -> None:
        (noise,) = [i for i in m.graph.input if i.name == "noise"]
        del noise.type.tensor_type.shape.dim[1]

    _edit_onnx(small_diffusion / "network.onnx", drop_dim)
    err = load_error(small_diffusion)
    assert (err.field, err.found, err.expected) == ("graph.input[noise].rank", 3, "4")


def test_onnx_of_the_other_kind(small_regression: Path, small_diffusion: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"graph\.input"):
        check_onnx_interface(small_diffusion / "network.onnx", "regression")


def test_malformed_json(small_diffusion: Path) -> None:
    (small_diffusion / "model_config_Mark.json").write_text('{"config": {"input_strength": 1.0,')
    err = load_error(small_diffusion)
    assert err.path.endswith("model_config_Mark.json") and err.field == "<document>"
    assert "malformed JSON" in str(err.found)


def test_missing_config_value(small_regression: Path) -> None:
    edit_json(small_regression / "model_config.json", lambda d: d["config"].pop("skin_strength"))
    err = load_error(small_regression)
    assert (err.field, err.found) == ("config.skin_strength", "absent")


def test_unknown_source_shot(small_regression: Path) -> None:
    edit_json(
        small_regression / "model_config.json",
        lambda d: d["config"].update(source_shot="shot_nowhere"),
    )
    err = load_error(small_regression)
    assert (err.field, err.found) == ("config.source_shot", "shot_nowhere")


def test_extra_array_in_model_data(small_regression: Path) -> None:
    edit_npz(small_regression / "model_data.npz", lambda a: a.update(extra=np.zeros(3)))
    err = load_error(small_regression)
    assert err.field == "<arrays>" and "extra" in err.found  # type: ignore[operator]


def test_emotion_names_checked(small_diffusion: Path) -> None:
    edit_json(small_diffusion / "network_info.json", lambda d: d["params"]["emotions"].reverse())
    err = load_error(small_diffusion)
    assert err.field == "params.emotions"


def test_paths_outside_folder_rejected(small_regression: Path) -> None:
    edit_json(small_regression / "model.json", lambda d: d.update(modelDataPath="../x.npz"))
    err = load_error(small_regression)
    assert err.field == "modelDataPath" and "inside" in err.expected


def test_unknown_identity_lists_names(small_diffusion: Path) -> None:
    mf = load_model_folder(small_diffusion)
    assert mf.identity("James").name == "James" and mf.identity(None).name == "Claire"
    with pytest.raises(NotFoundError, match="available: Claire, James, Mark"):
        mf.identity("Bob")


def test_message_names_file_field_found_expected(small_regression: Path) -> None:
    edit_json(small_regression / "network_info.json", lambda d: d["id"].update(type="gan"))
    msg = str(load_error(small_regression))
    assert "network_info.json" in msg and "id.type" in msg and "'gan'" in msg
