#!/usr/bin/env bash
# The tests' Python venv (tools/test-requirements.txt, pinned, from PyPI), kept outside the
# clone keyed by the requirements' checksum. Prints the venv's python on stdout; idempotent.
# tests/http.rs runs it, and tools/test-deps.sh calls it so `make test` has it ready.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
req="$here/test-requirements.txt"
cache="${EDGELLM_CACHE:-$HOME/.cache/edgellm}"
python="${PYTHON:-python3}"
venv="$cache/test-venv-$(sha256sum "$req" | cut -c1-16)"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "[test-venv] creating $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
