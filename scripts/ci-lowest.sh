#!/usr/bin/env bash
# Proves the lower bounds of pyproject.toml: installs the project with the LOWEST versions its
# direct dependencies allow (`uv pip install --resolution lowest-direct -e .[dev]`: every
# package named in [project.dependencies] and the dev extra at its lower bound, the packages
# they pull in at the newest that fits) into a fresh venv, prints what it got, and runs the
# unit tests that need neither Docker nor the full-size stand-ins against it, after ruff at
# its lower bound.
#
# The selection covers every direct runtime dependency and finishes in a few minutes on 2 cores:
#   tests/standin, tests/model_folder   numpy, onnx (graph building, checker), onnxruntime
#   tests/volume/test_watch.py          watchdog (inotify and polling observers)
#   tests/model_sync                    boto3/botocore against a real S3 server on loopback
#                                       (moto), incl. response_checksum_validation (>= 1.36)
#   tests/engine_builder                onnxruntime engines, prometheus-client, the daemon
#   tests/pipeline_numerics             numpy/scipy post-processing and blendshape solve
#   tests/pipeline                      the streaming pipeline on ONNX Runtime, threadpoolctl
#   tests/server/test_serving.py,       grpcio, grpcio-health-checking, grpcio-reflection,
#   tests/server/test_bad_input.py,     protobuf (the committed generated code checks the
#   tests/server/test_protos.py         runtime versions at import), grpcio-tools (regenerates
#                                       the code and compares it with the committed one)
# Left out: tests/deploy (Docker, compose, images), tests/reload and the server load/e2e
# modules (minutes of multi-process runs that exercise no dependency the above do not),
# tests/volume/test_contract.py (file publication with the standard library only),
# the `slow` (full-size stand-ins) and `docker` markers.
# pytest's exit code 5 (no test collected) fails this script like any other failure.
# Usage: scripts/ci-lowest.sh   (env PYTHON, default python3.11; A2F_CI_KEEP=1 keeps the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
t_start=$(date +%s)
say() { echo "[lowest] $(( $(date +%s) - t_start ))s: $*"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/a2f-ci-lowest.XXXXXX")
cleanup() { if [ "${A2F_CI_KEEP:-0}" = 1 ]; then echo "[lowest] kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT

# uv comes from PyPI into a throwaway venv; it resolves against PyPI itself.
"$PY" -m venv "$work/uv"
"$work/uv/bin/python" -m pip install -q --disable-pip-version-check uv
uv="$work/uv/bin/uv"
"$uv" venv -q --python "$PY" "$work/venv"
venv_py="$work/venv/bin/python"
say "installing with --resolution lowest-direct"
"$uv" pip install -q --python "$venv_py" --resolution lowest-direct -e '.[dev]'
# NVIDIA's published A2F-3D stubs, for the wire-compatibility test (as scripts/setup.sh does:
# test fixtures, not dependencies of the project, so pinned and without their dependencies).
"$uv" pip install -q --python "$venv_py" --no-deps -c constraints.txt nvidia-audio2face-3d nvidia-ace

# What the lower bounds resolved to: every direct dependency must sit at its lower bound.
"$venv_py" - <<'EOF'
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from packaging.version import Version

cfg = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = [Requirement(r) for r in cfg["dependencies"] + cfg["optional-dependencies"]["dev"]]
bad = []
for req in reqs:
    got = version(req.name)
    low = next((s.version for s in req.specifier if s.operator == ">="), None)
    mark = "" if low is None or Version(got) == Version(low) else "   <- not the lower bound"
    if mark:
        bad.append(req.name)
    print(f"  {req.name:24} {str(req.specifier):18} -> {got}{mark}")
if bad:
    sys.exit(f"[lowest] not installed at their lower bound: {', '.join(bad)} "
             "(a bound names a version that does not exist or cannot be installed)")
EOF

# The linter at its lower bound must accept the code as the pinned one does. (mypy's bound
# was found the same way, by hand: a cold mypy run costs minutes that this job does not need
# to spend on every change.)
say "ruff at its lower bound"
"$work/venv/bin/ruff" check .

say "running the unit tests against the lowest versions"
rc=0
"$venv_py" -m pytest -q -p no:cacheprovider -m "not docker and not slow" \
  tests/standin tests/model_folder tests/volume/test_watch.py tests/model_sync tests/engine_builder \
  tests/pipeline_numerics tests/pipeline \
  tests/server/test_serving.py tests/server/test_bad_input.py tests/server/test_protos.py \
  || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[lowest] FAILED: pytest collected no test" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || { echo "[lowest] FAILED: pytest exit code $rc" >&2; exit "$rc"; }
say "OK"
