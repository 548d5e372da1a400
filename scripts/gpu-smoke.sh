#!/usr/bin/env bash
# One-command check of the TensorRT path on a machine with an NVIDIA GPU and TensorRT:
# for each precision (fp32, fp16) it generates the two stand-in models (regression `mark`,
# diffusion `multi-diffusion`), builds and verifies their TensorRT engines with
# a2f-engine-builder, serves one stream of each through a2f-inference (engine policy
# require-built, so nothing falls back to ONNX Runtime), reloads one model once (a new ONNX,
# rebuilt, picked up by the hot reload) and prints the figures: build time, verification
# error, frames/s and server CPU per frame.
#
# Usage (from the repository root, inside the GPU image or a venv with the `gpu` extra and
# TensorRT's Python bindings):
#   scripts/gpu-smoke.sh
# Environment:
#   A2F_SMOKE_BACKEND     tensorrt (default); onnxruntime runs the same steps on a CPU
#   A2F_SMOKE_PRECISIONS  "fp32 fp16" (default)
#   A2F_SMOKE_SIZE        full (default, the published sizes) or small
#   A2F_SMOKE_SECONDS     seconds of audio per stream (default 10)
#   A2F_SMOKE_KEEP        1 keeps the work folder (printed at the end)
# Exit status 0 only if every step passed. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND=${A2F_SMOKE_BACKEND:-tensorrt}
PRECISIONS=${A2F_SMOKE_PRECISIONS:-fp32 fp16}
SIZE=${A2F_SMOKE_SIZE:-full}
SECONDS_AUDIO=${A2F_SMOKE_SECONDS:-10}
if [ -x .venv/bin/python ] && [ -z "${VIRTUAL_ENV:-}" ]; then PATH="$PWD/.venv/bin:$PATH"; fi
PY=python

fail() { echo "gpu-smoke: FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }

if [ "$BACKEND" = tensorrt ]; then
  command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this needs an NVIDIA GPU"
  nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader \
    || fail "nvidia-smi sees no GPU"
  $PY -c 'import tensorrt, sys; sys.exit(0 if hasattr(tensorrt, "Builder") else 1)' \
    || fail "the TensorRT Python bindings do not import (pip install the gpu extra and TensorRT)"
  $PY -c 'import tensorrt; from a2f_engine.targets import check_tensorrt_version; check_tensorrt_version(tensorrt.__version__); print("TensorRT", tensorrt.__version__)' \
    || fail "TensorRT too old"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/a2f-gpu-smoke.XXXXXX")
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "${A2F_SMOKE_KEEP:-0}" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# A speech-like test signal (16 kHz mono, 16-bit), the same for every run.
WAV="$WORK/speech.wav"
$PY - "$WAV" "$SECONDS_AUDIO" <<'EOF'
import sys, wave
import numpy as np
path, seconds = sys.argv[1], float(sys.argv[2])
rate = 16000
t = np.arange(int(rate * seconds)) / rate
rng = np.random.default_rng(0)
sig = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
sig += 0.02 * rng.standard_normal(t.size)
with wave.open(path, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
    w.writeframes((np.clip(sig, -1, 1) * 32767).astype("<i2").tobytes())
EOF

build() {  # root precision
  local t0 t1
  t0=$(date +%s.%N)
  a2f-engine-builder --models-root "$1" --backend "$BACKEND" --precision "$2" --once \
    --metrics-port 0 --log-level WARNING || fail "engine build ($BACKEND, $2) failed"
  t1=$(date +%s.%N)
  $PY -c "print(f\"   builder run: {$t1 - $t0:.1f} s\")"
}

report_records() {  # root
  $PY - "$1" "$BACKEND" <<'EOF'
import json, pathlib, sys
root, backend = pathlib.Path(sys.argv[1]), sys.argv[2]
ext = "trt" if backend == "tensorrt" else "ort"
for folder in sorted(p for p in root.iterdir() if (p / "network.onnx").is_file()):
    rec = json.loads((folder / f"network.{ext}.json").read_text())
    v = rec.get("verification", {})
    print(f"   {folder.name:16s} build {rec['build_seconds']:7.1f} s  precision "
          f"{rec['target'].get('precision')}  max abs error {v.get('max_abs_error', float('nan')):.3g}"
          f"  (atol {v.get('atol')}, rtol {v.get('rtol')})")
EOF
}

wait_ready() {  # port
  $PY - "$1" <<'EOF' || fail "server not ready within 600 s"
import sys, time, grpc
from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g
deadline = time.monotonic() + 600
channel = grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}")
while time.monotonic() < deadline:
    try:
        if g.HealthStub(channel).Check(h.HealthCheckRequest(), timeout=2).status == h.HealthCheckResponse.SERVING:
            sys.exit(0)
    except grpc.RpcError:
        pass
    time.sleep(0.5)
sys.exit(1)
EOF
}

metric() {  # metrics-port pattern -> sum of matching samples
  $PY - "$1" "$2" <<'EOF'
import re, sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
          if not l.startswith("#") and re.search(sys.argv[2], l)))
EOF
}

stream() {  # port model out
  local t0 t1 c0 c1 frames csv
  c0=$(cpu_ticks "$SERVER_PID"); t0=$(date +%s.%N)
  a2f-client --server "127.0.0.1:$1" --model "$2" --out "$3" --quiet "$WAV" \
    || fail "stream through $2 failed"
  t1=$(date +%s.%N); c1=$(cpu_ticks "$SERVER_PID")
  csv=$(ls "$3"/output_*/animation_frames.csv | tail -n1)
  frames=$(($(wc -l <"$csv") - 1))
  [ "$frames" -gt 0 ] || fail "$2 returned no frames"
  $PY -c "import os; t = $t1 - $t0; cpu = ($c1 - $c0) / os.sysconf('SC_CLK_TCK'); print(f'   {\"$2\":16s} {$frames} frames in {t:.2f} s = {$frames / t:.0f} frames/s, server CPU {1e3 * cpu / $frames:.3f} ms/frame')"
}

for precision in $PRECISIONS; do
  ROOT="$WORK/$precision/models"; mkdir -p "$ROOT"
  step "$precision: stand-ins ($SIZE)"
  a2f-standin regression --out "$ROOT/mark" --size "$SIZE" >>"$WORK/standin.log" 2>&1 \
    || fail "stand-in generation failed (see $WORK/standin.log)"
  a2f-standin diffusion --out "$ROOT/multi-diffusion" --size "$SIZE" >>"$WORK/standin.log" 2>&1 \
    || fail "stand-in generation failed (see $WORK/standin.log)"
  step "$precision: build and verify ($BACKEND)"
  build "$ROOT" "$precision"
  report_records "$ROOT"

  step "$precision: serve one stream of each"
  PORT=$(free_port); MPORT=$(free_port)
  a2f-inference --models-root "$ROOT" --host 127.0.0.1 --port "$PORT" --metrics-port "$MPORT" \
    --engine-policy require-built --hot-reload poll --reload-poll-s 1 --log-level WARNING \
    >"$WORK/$precision/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "$PORT"
  served=$(metric "$MPORT" "model_info\\{.*backend=\"$BACKEND\"")
  [ "${served%.*}" -ge 2 ] || fail "expected both models served by $BACKEND (see $WORK/$precision/server.log)"
  for model in mark multi-diffusion; do stream "$PORT" "$model" "$WORK/$precision/out-$model"; done

  step "$precision: reload (new ONNX for mark, rebuilt, picked up by the hot reload)"
  loads0=$(metric "$MPORT" 'model_loads_total\{.*model="mark".*result="loaded"')
  a2f-standin regression --out "$ROOT/mark" --size "$SIZE" --seed 1 >>"$WORK/standin.log" 2>&1 \
    || fail "stand-in generation failed (see $WORK/standin.log)"
  build "$ROOT" "$precision"
  $PY - "$MPORT" "$loads0" <<'EOF' || fail "the server did not reload mark within 600 s"
import re, sys, time, urllib.request
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
    n = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if not l.startswith("#")
            and re.search(r'model_loads_total\{.*model="mark".*result="loaded"', l))
    if n > float(sys.argv[2]):
        sys.exit(0)
    time.sleep(1)
sys.exit(1)
EOF
  report_records "$ROOT" | grep " mark "
  stream "$PORT" mark "$WORK/$precision/out-mark-reloaded"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
done
echo "gpu-smoke: PASSED ($BACKEND: $PRECISIONS)"
