#!/usr/bin/env bash
# Creates .venv and installs the project with pinned dependencies. Idempotent and quick when
# nothing changed. Usage: scripts/setup.sh [--system-test-deps]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

stamp=.venv/.a2f-setup-stamp
want=$(cat pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the project and its pinned dependencies into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  # NVIDIA's published A2F-3D stubs, for the wire-compatibility tests: nvidia-ace pins an old
  # grpcio that its generated code does not need, so both go in without dependencies.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt nvidia-audio2face-3d nvidia-ace
  # Type stubs for TensorRT: the runtime itself cannot be installed here, and the stubs'
  # metadata requires it, so they are installed without dependencies.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt tensorrt-stubs
  echo "$want" > "$stamp"
fi

if [ "${1:-}" = "--system-test-deps" ]; then
  scripts/install-system-deps.sh
fi
