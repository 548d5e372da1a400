#!/usr/bin/env bash
# Regenerates the Python code of proto/ into services/inference/a2f_inference/proto_gen/.
# The output is committed; run this (or `make proto`) after editing a .proto file.
# Usage: scripts/gen-proto.sh [OUT_DIR]   (uses .venv's grpcio-tools; deterministic output;
# OUT_DIR defaults to the committed location, tests pass another to compare)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; esac
out=${1:-services/inference/a2f_inference/proto_gen}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

protos=$(cd proto && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)
# shellcheck disable=SC2086
(cd proto && "$PY" -m grpc_tools.protoc -I . \
    --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" $protos)

# protoc writes imports relative to the proto root (`from nvidia_ace import audio_pb2`);
# make them point into this package so the published NVIDIA stubs are never picked up.
pkgs=$(cd proto && find . -mindepth 1 -maxdepth 1 -type d | sed 's|^\./||' | LC_ALL=C sort)
for f in $(find "$tmp" -name '*.py' -o -name '*.pyi'); do
  for p in $pkgs; do
    sed -i -E "s/^from ${p}( import )/from a2f_inference.proto_gen.${p}\1/" "$f"
  done
done
for d in $(cd "$tmp" && find . -type d); do
  printf '"""Generated from proto/ by scripts/gen-proto.sh; do not edit."""\n' > "$tmp/$d/__init__.py"
done

rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$tmp" "$out"
chmod -R u+rwX,go+rX "$out"
echo "[gen-proto] generated $(find "$out" -name '*_pb2*.py' | wc -l) modules into $out"
