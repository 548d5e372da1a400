#!/usr/bin/env bash
# The project as a user installs it: build the wheel from this checkout (`python -m build`,
# sdist first, wheel from the unpacked sdist, as a packager does), install it into a fresh
# venv OUTSIDE the checkout and run it from a directory where the checkout is not on sys.path:
#   1. the build prints no warning of the build backend (license, config deprecations);
#   2. the wheel holds the generated protobuf/gRPC code and every package's py.typed;
#   3. the installed packages import from the venv, not from the checkout;
#   4. every console script of [project.scripts] answers --help;
#   5. a2f-standin writes both small stand-ins, a2f-engine-builder --once builds and publishes
#      an ONNX Runtime engine for each;
#   6. a2f-inference serves them on 127.0.0.1 (built engines required), a2f-client streams a
#      generated WAV and animation frames come back; the server stops on SIGTERM.
# Dependencies are installed with -c constraints.txt (the pinned set CI tests; the lowest
# allowed set is scripts/ci-lowest.sh's job); A2F_WHEEL_UNPINNED=1 installs the newest instead.
# Usage: scripts/ci-wheel.sh   (env PYTHON, default python3.11; A2F_CI_KEEP=1 keeps the work dir)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
t_start=$(date +%s)

work=$(mktemp -d "${TMPDIR:-/tmp}/a2f-ci-wheel.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "${A2F_CI_KEEP:-0}" = 1 ]; then echo "[wheel] kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
say() { echo "[wheel] $(( $(date +%s) - t_start ))s: $*"; }
fail() { echo "[wheel] FAILED: $*" >&2; exit 1; }

# -- 1. build ---------------------------------------------------------------------------------
say "building sdist and wheel with $($PY --version)"
"$PY" -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install -q --disable-pip-version-check build
# Build from a clean export of the tracked files so nothing untracked (venvs, caches, local
# stand-ins) can slip into the artefacts, and the checkout gets no build/ or egg-info.
mkdir "$work/src"
git -C "$repo" ls-files -z --cached --others --exclude-standard | tar -C "$repo" --null -T - -cf - | tar -xf - -C "$work/src"
# Files changed but not yet committed are exported as they are in the working tree, which
# is what a developer running this locally wants to check.
"$work/build-env/bin/python" -m build --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; fail "python -m build"; }
# Warnings of the build backend (setuptools) or of the build front end's isolated installs.
if grep -nE "[A-Za-z]*Warning|DEPRECATED|deprecated" "$work/build.log"; then
  fail "the build printed the warnings above (full log: $work/build.log)"
fi
wheel=$(ls "$work"/dist/*.whl)
say "built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB), no build warning"

# -- 2. contents ------------------------------------------------------------------------------
"$PY" - "$repo" "$wheel" <<'EOF'
import sys
import tomllib
import zipfile
from pathlib import Path

repo, wheel = Path(sys.argv[1]), Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
cfg = tomllib.loads((repo / "pyproject.toml").read_text())
roots = cfg["tool"]["setuptools"]["packages"]["find"]["where"]
want = []
for root in roots:
    base = repo / root
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if not rel.startswith("a2f_") or "__pycache__" in rel:
            continue
        if path.name == "py.typed" or (path.suffix in (".py", ".pyi") and "_pb2" in path.name):
            want.append(rel)
missing = [w for w in want if w not in names]
typed = [w for w in want if w.endswith("py.typed")]
gen = [w for w in want if "_pb2" in w]
if missing or not typed or not gen:
    sys.exit(f"wheel misses {missing or 'py.typed / generated protobuf code entirely'}")
print(f"[wheel] ships {len(gen)} generated protobuf/gRPC modules and {len(typed)} py.typed "
      f"({', '.join(t.split('/')[0] for t in typed)})")
EOF

# -- 3. install outside the checkout -----------------------------------------------------------
venv="$work/venv"
"$PY" -m venv "$venv"
pins=(-c "$repo/constraints.txt")
[ "${A2F_WHEEL_UNPINNED:-0}" = 1 ] && pins=()
say "installing the wheel into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" "$wheel" \
  >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "pip install of the wheel"; }
cd "$work"   # from here on the checkout is not the working directory, nor on sys.path
export PYTHONNOUSERSITE=1
unset PYTHONPATH
"$venv/bin/python" - "$repo" <<'EOF'
import importlib
import sys
from pathlib import Path

repo = Path(sys.argv[1]).resolve()
for mod in ("a2f_volume", "a2f_engine", "a2f_standin", "a2f_model_sync", "a2f_engine_builder",
            "a2f_inference", "a2f_inference.proto_gen.nvidia_audio2face_3d.audio2face_pb2_grpc"):
    path = Path(importlib.import_module(mod).__file__).resolve()
    if repo in path.parents or not str(path).startswith(sys.prefix):
        sys.exit(f"{mod} imported from {path}, not from the venv {sys.prefix}")
print("[wheel] every package imports from the venv")
EOF

# -- 4. console scripts ------------------------------------------------------------------------
mapfile -t scripts < <("$PY" -c '
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["scripts"]))' "$repo/pyproject.toml")
[ "${#scripts[@]}" -gt 0 ] || fail "no [project.scripts] in pyproject.toml"
for s in "${scripts[@]}"; do
  [ -x "$venv/bin/$s" ] || fail "console script $s is not installed"
  "$venv/bin/$s" --help >"$work/help-$s.txt" 2>&1 || { cat "$work/help-$s.txt"; fail "$s --help"; }
  grep -q "usage:" "$work/help-$s.txt" || fail "$s --help printed no usage"
done
say "--help of ${#scripts[@]} console scripts: ${scripts[*]}"

# -- 5. stand-ins and engines ----------------------------------------------------------------------
models="$work/models"
for kind in regression diffusion; do
  "$venv/bin/a2f-standin" "$kind" --out "$models/$kind" --size small >"$work/standin-$kind.log" 2>&1 \
    || { cat "$work/standin-$kind.log"; fail "a2f-standin $kind"; }
done
say "generated the small regression and diffusion stand-ins"
"$venv/bin/a2f-engine-builder" --models-root "$models" --once --backend onnxruntime \
  --metrics-port 0 >"$work/builder.log" 2>&1 || { cat "$work/builder.log"; fail "a2f-engine-builder --once"; }
for kind in regression diffusion; do
  [ -s "$models/$kind/network.ort" ] && [ -s "$models/$kind/network.ort.json" ] \
    || { cat "$work/builder.log"; fail "no ONNX Runtime engine published for $kind"; }
done
say "a2f-engine-builder --once built and published an engine for both"

# -- 6. serve one stream ---------------------------------------------------------------------------
"$venv/bin/python" - "$work/speech.wav" <<'EOF'
import math
import struct
import sys
import wave

rate, seconds = 16000, 2.0
samples = []
for i in range(int(rate * seconds)):
    t = i / rate
    env = math.sin(math.pi * ((t * 3.0) % 1.0)) ** 2  # three syllables per second
    v = sum(math.sin(2 * math.pi * 140.0 * h * t) / h for h in range(1, 12))
    samples.append(int(max(-1.0, min(1.0, 0.35 * env * v)) * 32767))
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(struct.pack(f"<{len(samples)}h", *samples))
EOF
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
address="127.0.0.1:$port"
"$venv/bin/a2f-inference" --models-root "$models" --model-path "$models/regression/model.json" \
  --host 127.0.0.1 --port "$port" --metrics-port -1 \
  --engine-policy require-built --hot-reload off --grace-s 5 >"$work/server.log" 2>&1 &
server_pid=$!
# Ready = the standard gRPC health service reports SERVING (models loaded); bounded at 90 s.
"$venv/bin/python" - "$address" "$server_pid" <<'EOF2' || { cat "$work/server.log"; fail "a2f-inference never reported SERVING"; }
import os
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

address, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 90.0
with grpc.insecure_channel(address) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit("a2f-inference exited")
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                sys.exit(0)
        except grpc.RpcError:
            pass
        time.sleep(0.2)
sys.exit("no SERVING within 90 s")
EOF2
say "a2f-inference serving on $address (built engines required)"
timeout 120 "$venv/bin/a2f-client" "$work/speech.wav" --server "$address" --model regression \
  --out "$work/client" >"$work/client.log" 2>&1 || { cat "$work/client.log" "$work/server.log"; fail "a2f-client"; }
csv=$(find "$work/client" -name animation_frames.csv | head -1)
[ -n "$csv" ] || { cat "$work/client.log"; fail "a2f-client wrote no animation_frames.csv"; }
frames=$(( $(wc -l <"$csv") - 1 ))
# 2 s of audio at the default 30 fps: 60 frames.
[ "$frames" -ge 55 ] || { cat "$work/client.log"; fail "only $frames animation frames came back"; }
grep -q "JawOpen" "$csv" || fail "animation_frames.csv has no JawOpen column"
kill -TERM "$server_pid"
rc=0
timeout 30 tail --pid="$server_pid" -f /dev/null || rc=$?
wait "$server_pid" || rc=$?
server_pid=""
[ "$rc" -eq 0 ] || { cat "$work/server.log"; fail "a2f-inference exited with $rc on SIGTERM"; }
say "streamed 2 s of audio: $frames frames came back; the server stopped cleanly"
say "OK"
