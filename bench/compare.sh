#!/usr/bin/env bash
# Runs bench/compare.py with the model converter's venv, which has onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
models/prepare.sh
cache="${EDGELLM_CACHE:-$HOME/.cache/edgellm}"
venv="$cache/venv-$(sha256sum models/requirements.txt | cut -c1-16)"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
exec "$venv/bin/python" bench/compare.py --edgellm "$target/release/edgellm" "$@"
