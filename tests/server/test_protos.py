"""Our .proto files are wire- and descriptor-identical to NVIDIA's published stubs."""

from __future__ import annotations

import filecmp
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["nvidia_ace.audio_pb2", "nvidia_ace.animation_pb2", "nvidia_ace.status_pb2",
           "nvidia_audio2face_3d.messages_pb2", "nvidia_audio2face_3d.audio2face_pb2",
           "nvidia_audio2face_3d.a2x_export_config_pb2"]


@pytest.mark.parametrize("module", MODULES)
def test_descriptor_matches_nvidia_published_stub(module: str) -> None:
    theirs = importlib.import_module(module).DESCRIPTOR
    ours = importlib.import_module(f"a2f_inference.proto_gen.{module}").DESCRIPTOR
    assert ours.name == theirs.name
    assert ours.package == theirs.package
    assert ours.serialized_pb == theirs.serialized_pb


def test_service_paths_are_nvidias() -> None:
    from a2f_inference.proto_gen.nvidia_audio2face_3d import a2x_export_config_pb2, audio2face_pb2

    a2f = audio2face_pb2.DESCRIPTOR.services_by_name["A2FControllerService"]
    cfg = a2x_export_config_pb2.DESCRIPTOR.services_by_name["A2XExportConfigService"]
    assert a2f.full_name == "nvidia_ace.services.a2f_controller.v1.A2FControllerService"
    assert cfg.full_name == "nvidia_ace.services.a2x_export_config.v1.A2XExportConfigService"
    m = a2f.methods_by_name["ProcessAudioStream"]
    assert m.client_streaming and m.server_streaming


def test_generated_code_is_reproduced_by_one_command(tmp_path: Path) -> None:
    out = tmp_path / "proto_gen"
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(out)], check=True,
                   cwd=ROOT, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                   capture_output=True)
    committed = ROOT / "services" / "inference" / "a2f_inference" / "proto_gen"
    cmp = filecmp.dircmp(out, committed, ignore=["__pycache__"])

    def differences(c: filecmp.dircmp[str]) -> list[str]:
        found = [*c.left_only, *c.right_only, *c.diff_files, *c.funny_files]
        for sub in c.subdirs.values():
            found += differences(sub)
        return found

    assert differences(cmp) == []
