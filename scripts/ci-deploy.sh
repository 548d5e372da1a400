#!/usr/bin/env bash
# Deployment CI stage: the three images, the CPU compose stack, one real stream end to end.
#
#   1. installs what it needs (docker.io, debootstrap, docker-compose, espeak-ng, sox) and
#      starts dockerd when none is running (stopped again at the end);
#   2. makes a Debian bookworm base image with debootstrap (no registry is reachable here),
#      carrying this machine's CA bundle for pip (PIP_CERT during the builds only);
#   3. builds a2f-model-sync, a2f-engine-builder, a2f-inference on it (ONNX Runtime backend),
#      plus two stand-ins for images that cannot be pulled: an S3 server (moto) in place of
#      MinIO and a Prometheus from Debian's package;
#   4. brings up compose.yaml + compose.cpu.yaml (+ a generated override naming the stand-ins),
#      waits for the server to become healthy, streams a spoken WAV through a2f-client over
#      127.0.0.1, checks the frames, and checks that Prometheus scraped all three services;
#   5. scales inference to two replicas (compose.replicas.yaml) and proves that 20 streams over
#      one client channel land on both (tests/deploy/test_deploy_replicas.py);
#   6. tears everything down (trap), printing the services' logs when a step failed.
# Prints the wall time of each step and of the whole stage.
#
# Usage: scripts/ci-deploy.sh            (from anywhere; needs root or sudo for apt/dockerd)
# Env:   A2F_CI_KEEP=1        leave the stack running for inspection (no teardown)
#        A2F_CI_REBUILD_BASE=1  rebuild the debootstrap base image even when present
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/.a2f-local/ci-deploy
mkdir -p "$WORK"
T0=$(date +%s)
PROJECT=a2f-ci
TAG=ci
BASE=local/a2f-bookworm:base
STARTED_DOCKERD=
FAILED=1

log() { printf '[ci-deploy %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
step_start() { STEP=$1; STEP_T=$(date +%s); log "== $STEP"; }
step_end() { log "   $STEP: $(( $(date +%s) - STEP_T )) s"; }

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi

COMPOSE=(docker-compose -p "$PROJECT" -f compose.yaml -f compose.cpu.yaml -f "$WORK/compose.ci.yaml")
compose() { "${COMPOSE[@]}" "$@"; }

teardown() {
  local rc=$?
  set +e
  if [ "$FAILED" = 1 ] && [ -f "$WORK/compose.ci.yaml" ]; then
    log "FAILED in step: ${STEP:-setup}; service logs follow"
    timeout 60 "${COMPOSE[@]}" ps
    timeout 60 "${COMPOSE[@]}" logs --no-color --tail=150
  fi
  if [ "${A2F_CI_KEEP:-}" = 1 ]; then
    log "A2F_CI_KEEP=1: leaving project $PROJECT running"
  elif [ -f "$WORK/compose.ci.yaml" ] && command -v docker-compose >/dev/null; then
    timeout 120 "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
  fi
  if [ -n "$STARTED_DOCKERD" ] && [ "${A2F_CI_KEEP:-}" != 1 ]; then
    kill "$STARTED_DOCKERD" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
  fi
  log "total wall time: $(( $(date +%s) - T0 )) s (exit $rc)"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
step_start "host packages"
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need+=(sox)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive timeout 600 $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; exit 1; }
fi
[ -x .venv/bin/a2f-client ] || scripts/setup.sh
step_end

step_start "docker engine"
if ! timeout 10 docker info >/dev/null 2>&1; then
  log "starting dockerd (log: $WORK/dockerd.log)"
  $SUDO dockerd >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 1 60); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 0.5; done
  timeout 10 docker info >/dev/null 2>&1 || { tail -30 "$WORK/dockerd.log"; exit 1; }
fi
step_end

step_start "compose files"
docker-compose -f compose.yaml -f compose.override.yaml config -q  # GPU (= plain `up`)
docker-compose -f compose.yaml -f compose.cpu.yaml config -q    # CPU variant
docker-compose -f compose.yaml -f compose.cpu.yaml -f compose.replicas.yaml --profile check config -q
step_end

# ---------------------------------------------------------------------------------------
step_start "base image $BASE"
if [ "${A2F_CI_REBUILD_BASE:-}" = 1 ] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$WORK/rootfs
  $SUDO rm -rf "$rootfs"
  log "debootstrap --variant=minbase bookworm from $mirror"
  timeout 900 $SUDO debootstrap --variant=minbase bookworm "$rootfs" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log"; exit 1; }
  # This machine's CA bundle, for pip behind its TLS proxy (the builds pass PIP_CERT).
  $SUDO cp /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/local/share/host-ca-bundle.pem"
  $SUDO rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/*
  $SUDO tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
  $SUDO rm -rf "$rootfs"
fi
step_end

step_start "service images"
build() {  # build NAME DOCKERFILE [extra args...]
  local name=$1 file=$2; shift 2
  log "docker build $name"
  timeout 1200 docker build -f "$file" -t "$name" --build-arg BASE_IMAGE="$BASE" \
    --build-arg PIP_CERT=/usr/local/share/host-ca-bundle.pem "$@" . \
    >"$WORK/build-${name%%:*}.log" 2>&1 || { tail -40 "$WORK/build-${name%%:*}.log"; exit 1; }
}
build "a2f-model-sync:$TAG" services/model-sync/Dockerfile
build "a2f-engine-builder:$TAG" services/engine-builder/Dockerfile --build-arg A2F_EXTRAS=
build "a2f-inference:$TAG" services/inference/Dockerfile --build-arg A2F_EXTRAS=
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^a2f-.*:$TAG " | sed 's/^/    /'
step_end

step_start "stand-in images (S3, Prometheus)"
moto_pin=$(grep -i '^moto==' constraints.txt || echo 'moto')
timeout 900 docker build -t a2f-ci/moto:$TAG --build-arg BASE_IMAGE="$BASE" - \
  >"$WORK/build-moto.log" 2>&1 <<EOF || { tail -40 "$WORK/build-moto.log"; exit 1; }
ARG BASE_IMAGE
FROM \${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PIP_CERT=/usr/local/share/host-ca-bundle.pem PIP_NO_CACHE_DIR=1
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/moto \
    && /opt/moto/bin/pip install -q "${moto_pin/moto/moto[server]}"
USER 65534:65534
ENTRYPOINT ["/opt/moto/bin/moto_server"]
EOF
timeout 900 docker build -t a2f-ci/prometheus:$TAG --build-arg BASE_IMAGE="$BASE" - \
  >"$WORK/build-prometheus.log" 2>&1 <<'EOF' || { tail -40 "$WORK/build-prometheus.log"; exit 1; }
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown 65534:65534 /prometheus
USER 65534:65534
ENTRYPOINT ["/usr/bin/prometheus"]
EOF
step_end

# ---------------------------------------------------------------------------------------
step_start "compose up (CPU variant)"
free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export A2F_IMAGE_TAG=$TAG
A2F_GRPC_PORT=$(free_port); A2F_METRICS_PORT=$(free_port); A2F_PROMETHEUS_PORT=$(free_port)
A2F_S3_PORT=$(free_port); A2F_S3_CONSOLE_PORT=$(free_port); A2F_GRAFANA_PORT=$(free_port)
export A2F_GRPC_PORT A2F_METRICS_PORT A2F_PROMETHEUS_PORT A2F_S3_PORT A2F_S3_CONSOLE_PORT A2F_GRAFANA_PORT
cat >"$WORK/compose.ci.yaml" <<EOF
# Generated by scripts/ci-deploy.sh: stand-ins for the images CI cannot pull.
services:
  s3:
    image: a2f-ci/moto:$TAG
    command: ["-H", "0.0.0.0", "-p", "9000"]
    healthcheck:
      test: ["CMD", "/opt/moto/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/', timeout=3)"]
      interval: 2s
      timeout: 5s
      retries: 60
  prometheus:
    image: a2f-ci/prometheus:$TAG
EOF
compose config -q
compose down -v --remove-orphans >/dev/null 2>&1 || true
timeout 300 "${COMPOSE[@]}" up -d --no-build s3 s3-seed model-sync engine-builder inference prometheus
step_end

step_start "wait for inference healthy"
cid=$(compose ps -q inference)
deadline=$(( $(date +%s) + 600 ))
while :; do
  state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid")
  [ "$state" = "running healthy" ] && break
  case $state in exited*|dead*) log "inference container: $state"; exit 1 ;; esac
  [ "$(date +%s)" -lt "$deadline" ] || { log "inference not healthy after 600 s ($state)"; exit 1; }
  sleep 2
done
log "inference healthy; services:"
compose ps
step_end

step_start "stream a WAV through a2f-client"
espeak-ng -v en-us -s 150 -w "$WORK/speech-raw.wav" \
  "The quick brown fox jumps over the lazy dog. Audio to face, streaming from the container."
sox "$WORK/speech-raw.wav" -r 16000 -c 1 -b 16 "$WORK/speech.wav"
rm -rf "$WORK/client-out"
timeout 180 .venv/bin/a2f-client "$WORK/speech.wav" --server "127.0.0.1:$A2F_GRPC_PORT" \
  --out "$WORK/client-out"
csv=$(find "$WORK/client-out" -name animation_frames.csv | head -n1)
[ -n "$csv" ] || { log "no animation_frames.csv under $WORK/client-out"; exit 1; }
.venv/bin/python - "$csv" "$WORK/speech.wav" <<'EOF'
import csv, math, sys, wave
rows = list(csv.reader(open(sys.argv[1], newline="")))
header, frames = rows[0], rows[1:]
with wave.open(sys.argv[2]) as w:
    audio_s = w.getnframes() / w.getframerate()
expected = audio_s * 30
bs = [h for h in header if h.startswith("blendShapes.")]
assert header[0] == "timeCode" and bs, f"unexpected header: {header[:5]}"
assert abs(len(frames) - expected) <= max(5, 0.1 * expected), \
    f"{len(frames)} frames for {audio_s:.2f} s of audio, expected about {expected:.0f} at 30 fps"
values = [float(v) for r in frames for v in r[1:] if v not in ("",)]
assert all(math.isfinite(v) for v in values), "non-finite values in the frames"
assert len({round(v, 6) for v in values}) > 10, "frames are constant"
print(f"    {len(frames)} frames x {len(header)} columns for {audio_s:.2f} s of audio")
EOF
step_end

step_start "Prometheus scraped all three services"
prom=http://127.0.0.1:$A2F_PROMETHEUS_PORT
deadline=$(( $(date +%s) + 90 ))
while :; do
  if .venv/bin/python - "$prom" <<'EOF'
import json, sys, urllib.parse, urllib.request
base = sys.argv[1]
def q(expr):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]
up = {s["metric"]["job"]: s["value"][1] for s in q('up{job=~"a2f-.*"}')}
frames = q('sum(a2f_inference_frames_sent_total)')
sync = q('max(a2f_model_sync_last_success_timestamp_seconds)')
built = q('sum(a2f_engine_builder_builds_total{result=~"built|reused|up_to_date"})')
models = q('a2f_inference_model_info == 1')
def val(r):
    return float(r[0]["value"][1]) if r else 0.0
ok = (all(up.get(j) == "1" for j in ("a2f-inference", "a2f-engine-builder", "a2f-model-sync"))
      and val(frames) > 0 and val(sync) > 0 and val(built) > 0 and models)
print(f"    up={up} frames_sent={val(frames):.0f} last_sync={val(sync):.0f} "
      f"engines_ok={val(built):.0f} served={[m['metric'].get('backend') for m in models]}")
sys.exit(0 if ok else 1)
EOF
  then break; fi
  [ "$(date +%s)" -lt "$deadline" ] || { log "Prometheus did not see all three services"; exit 1; }
  sleep 3
done
step_end

step_start "two inference replicas: one channel spreads its streams"
# compose.replicas.yaml scales inference to 2; 20 streams over one dns:/// round_robin channel
# must land on both (tests/deploy/test_deploy_replicas.py, marker docker).
A2F_CI_COMPOSE_PROJECT=$PROJECT A2F_CI_COMPOSE_FILES="compose.yaml:compose.cpu.yaml:$WORK/compose.ci.yaml" \
  timeout 1200 .venv/bin/pytest -q -p no:cacheprovider -s -m docker tests/deploy/test_deploy_replicas.py
step_end

FAILED=0
log "deployment stage passed"
