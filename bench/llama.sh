#!/usr/bin/env bash
# llama.cpp beside edgellm on the same model, same prompt length, same decode length:
# 1. builds llama.cpp's llama-bench and llama-quantize (only those two targets) from the
#    llama.cpp that the pinned llama-cpp-python sdist on PyPI vendors, with cmake from PyPI,
#    once (about 11 minutes of 2 cores, at nice 15), cached in $EDGELLM_CACHE/llama.cpp;
# 2. re-quantizes the default model's GGUF (models/prepare.sh fetches it) to Q4_0;
# 3. runs bench/contention.sh with llama-bench in the same alternating rounds, by default on
#    a quiet machine and beside one busy process.
#
#   bench/llama.sh [contention.sh options]    (default: --loads "0 1" --rounds 3)
#   bench/llama.sh --build-only               steps 1 and 2; prints the two paths
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
cmake_version=4.4.4
cache="${EDGELLM_CACHE:-$HOME/.cache/edgellm}"
home="$cache/llama.cpp"
src="$home/llama-cpp-python-$version"
build="$home/build-$version"
python="${PYTHON:-python3}"
say() { echo "[llama.cpp] $*" >&2; }

# A CPU may list AMX while the hypervisor does not let a process use its tiles: ggml's AMX
# kernels (built with -march=native) then die of SIGILL at the first tile load. Probe a tile
# load; where it fails, build without AMX (its own build dir).
extra_flags=""
if grep -qw amx_tile /proc/cpuinfo; then
  probe=$(mktemp -d)
  cat >"$probe/amx.c" <<'C'
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
struct config { unsigned char palette, start_row, reserved[14]; unsigned short colsb[16]; unsigned char rows[16]; };
int main(void) {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 1;
  struct config config; memset(&config, 0, sizeof config);
  config.palette = 1; config.colsb[0] = 64; config.rows[0] = 16;
  static char tile[16 * 64];
  _tile_loadconfig(&config); _tile_loadd(0, tile, 64); _tile_release();
  return 0;
}
C
  if ! { gcc -O1 -mamx-tile -o "$probe/amx" "$probe/amx.c" && "$probe/amx"; } >/dev/null 2>&1; then
    say "the CPU lists AMX but this machine cannot run its tiles: building llama.cpp without AMX"
    extra_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    build="$build-noamx"
  fi
  rm -rf "$probe"
fi

models/prepare.sh
gguf="$cache/downloads/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$gguf" ] || { say "no $gguf: models/prepare.sh did not leave it"; exit 1; }

if [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama-quantize" ]; then
  mkdir -p "$home"
  if [ ! -f "$src/.complete" ]; then
    say "fetching the llama-cpp-python $version sdist"
    # Only this package from source: its build requirements (cmake, ninja) from source would
    # take longer than llama.cpp itself.
    tmp=$(mktemp -d)
    "$python" -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$tmp" "llama-cpp-python==$version"
    rm -rf "$src"
    mkdir -p "$src"
    tar -xzf "$tmp"/*.tar.gz -C "$src" --strip-components=1
    rm -rf "$tmp"
    touch "$src/.complete"
  fi
  cmake=$(command -v cmake || true)
  if [ -z "$cmake" ]; then
    if [ ! -x "$home/venv/bin/cmake" ]; then
      say "installing cmake $cmake_version from PyPI into $home/venv"
      "$python" -m venv "$home/venv"
      "$home/venv/bin/pip" install --quiet --disable-pip-version-check "cmake==$cmake_version"
    fi
    cmake="$home/venv/bin/cmake"
  fi
  say "building llama-bench and llama-quantize (about 11 minutes of 2 cores)"
  nice -n 15 "$cmake" -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="$extra_flags" -DCMAKE_CXX_FLAGS="$extra_flags" -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >"$home/cmake.log"
  nice -n 15 "$cmake" --build "$build" --target llama-bench llama-quantize -j 2 >"$home/build.log"
fi

q4_0="$home/SmolLM2-135M-Instruct.Q4_0.gguf"
if [ ! -f "$q4_0" ] || [ "$gguf" -nt "$q4_0" ]; then
  say "re-quantizing $(basename "$gguf") to Q4_0"
  "$build/bin/llama-quantize" --allow-requantize "$gguf" "$q4_0.part" Q4_0 >"$home/quantize.log" 2>&1
  mv "$q4_0.part" "$q4_0"
fi

if [ "${1:-}" = "--build-only" ]; then
  echo "$build/bin/llama-bench"
  echo "$q4_0"
  exit 0
fi
[ $# -gt 0 ] || set -- --loads "0 1" --rounds 3
say "llama.cpp as vendored by llama-cpp-python $version; model $(basename "$q4_0")"
LLAMA_BENCH="$build/bin/llama-bench" LLAMA_MODEL="$q4_0" exec bench/contention.sh "$@"
