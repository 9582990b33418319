#!/usr/bin/env bash
# Runs a benchmark script with the model converter's venv, which has onnxruntime:
#   bench/run.sh compare        edgellm bench vs onnxruntime on the same ONNX file
#   bench/run.sh daemon_bench   the daemon end to end over its socket vs onnxruntime
#   bench/run.sh grounding_bench  what dense retrieval adds: latency, RSS, start-up
set -euo pipefail
cd "$(dirname "$0")/.."
script="${1:?usage: bench/run.sh compare|daemon_bench|grounding_bench [args...]}"
shift
models/prepare.sh
cache="${EDGELLM_CACHE:-$HOME/.cache/edgellm}"
venv="$cache/venv-$(sha256sum models/requirements.txt | cut -c1-16)"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
exec "$venv/bin/python" "bench/$script.py" --edgellm "$target/release/edgellm" "$@"
