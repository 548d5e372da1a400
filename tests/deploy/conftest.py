"""Fixtures of the deployment tests: rendered kustomize overlays and the validator tools.

checkov and kubernetes-validate have dependency pins of their own, so they live in a separate
venv (``.a2f-local/tools-venv``, created here on first use), never in the project's venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TOOLS_VENV = ROOT / ".a2f-local" / "tools-venv"
TOOLS = ("checkov==3.3.30", "kubernetes-validate==1.37.0")

# Every deployable kustomization and the Kubernetes versions its output must validate for.
# The DRA overlay uses resource.k8s.io/v1 (GA in 1.34); 1.30 has no such API.
OVERLAYS: dict[str, tuple[str, ...]] = {
    "overlays/g4dn": ("1.30.0", "1.34.0"),
    "overlays/g5": ("1.30.0", "1.34.0"),
    "overlays/cpu-dev": ("1.30.0", "1.34.0"),
    "overlays/g4dn-dra": ("1.34.0",),
    "cluster/nvidia-device-plugin": ("1.30.0", "1.34.0"),
}


def run(cmd: list[str], *, cwd: Path = ROOT, timeout: float = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                    f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def need_tool(name: str, how: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {how}")
    return path


def render(kustomization: Path) -> str:
    kubectl = need_tool("kubectl", "kubectl (with kustomize) is expected preinstalled")
    return run([kubectl, "kustomize", str(kustomization)]).stdout


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kustomization rendered once, as a file: {"overlays/g4dn": path, ...}."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name in OVERLAYS:
        path = out / (name.replace("/", "_") + ".yaml")
        path.write_text(render(K8S / name), encoding="utf-8")
        files[name] = path
    return files


@pytest.fixture(scope="session")
def tools_venv() -> Iterator[Path]:
    """The validators' own venv, created with pinned versions when missing."""
    bin_dir = TOOLS_VENV / "bin"
    if not all((bin_dir / t).exists() for t in ("checkov", "kubernetes-validate")):
        py = shutil.which("python3.11") or sys.executable
        run([py, "-m", "venv", str(TOOLS_VENV)], timeout=120)
        env = dict(os.environ)
        env.pop("PIP_CONSTRAINT", None)
        run([str(bin_dir / "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", *TOOLS], timeout=900, env=env)
    yield bin_dir
