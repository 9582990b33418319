#!/usr/bin/env bash
# The ARM stage of CI (`make arm`, called by .ci/run): cross builds for aarch64 and armv7 with
# Debian's Rust (tools/arm-deps.sh installs it), the unit tests and the tiny model's golden
# tokens under user-mode QEMU, clippy for both targets (on what is built for them), the real
# model answering one prompt
# under QEMU on aarch64, and a .deb for arm64 and armhf, checked for its architecture and
# contents.
#
# aarch64 runs under two CPUs: QEMU's default (`max`: NEON with dotprod, SVE and fp16) and
# `QEMU_CPU=cortex-a72` (plain NEON, a Raspberry Pi 4). armv7 has no kernels of ours: tract's.
#
# Builds use the `arm-ci` profile (Cargo.toml: opt-level 1, tract's and our kernels at 3) in
# their own target dirs outside the clone (EDGELLM_ARM_TARGET_DIR, default
# $EDGELLM_CACHE/armtarget, and the same with -armv7), with Debian's cargo home
# (EDGELLM_ARM_CARGO_HOME). Stages:
#   tools/arm.sh [aarch64] [armv7]      (default: both)
# Environment: ARM_SKIP_REAL=1 skips the real model's answer (about two minutes under QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache="${EDGELLM_CACHE:-$HOME/.cache/edgellm}"
profile=arm-ci
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64 armv7)

say() { echo "[arm] $*"; }
started=$SECONDS
# CPU seconds (user + system) used by the commands this shell has waited for: on a shared
# machine the wall time says how busy it was, the CPU time what the stage costs.
cpu_file=$(mktemp)
trap 'rm -f "$cpu_file"' EXIT
cpu=0
cpu_now() { # sets cpu; `times` must run in this shell, not in a $(…) subshell
  times >"$cpu_file"
  cpu=$(tail -1 "$cpu_file" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%d", t }')
}
timed() { # label command...
  local t0=$SECONDS c0
  cpu_now
  c0=$cpu
  "${@:2}"
  cpu_now
  say "$1: $((SECONDS - t0)) s ($((cpu - c0)) s CPU, load $(cut -d' ' -f1 /proc/loadavg))"
}

timed "deps" tools/arm-deps.sh

# Debian's toolchain, not rustup's: its standard libraries are the ones installed for arm64
# and armhf. No `-L` for qemu-aarch64: with it, QEMU pairs the cross package's loader with
# the arm64 libc that multiarch installs, and the first thread start loops forever.
export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO=/usr/bin/cargo
export CARGO_HOME="${EDGELLM_ARM_CARGO_HOME:-$cache/armcargo}"
# One target dir per target, so that the two can be built at once (cargo locks a target dir).
target_root="${EDGELLM_ARM_TARGET_DIR:-$cache/armtarget}"
export CARGO_TERM_COLOR=never
unset RUSTFLAGS CARGO_BUILD_TARGET
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
# armv7's runner: where armhf is a multiarch architecture (its standard library came from apt,
# bringing libc6:armhf and /lib/ld-linux-armhf.so.3), no `-L` either: with it QEMU pairs the
# cross package's loader with the multiarch libc, and every test binary dies of SIGSEGV before
# its first test (seen on a machine whose apt could install armhf). Without multiarch (the
# unpacked sysroot), `-L` gives the cross package's loader and libc, which belong together.
if [ -e /lib/ld-linux-armhf.so.3 ]; then
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER=qemu-arm-static
else
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/arm-linux-gnueabihf"
fi
# armhf's standard library: from apt when it could be installed, else the unpacked sysroot.
if [ -f "$cache/armhf-sysroot/.version" ] && ! dpkg-query -W libstd-rust-web-dev:armhf >/dev/null 2>&1; then
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="--sysroot $cache/armhf-sysroot/usr"
fi
# Clippy lints the workspace's crates as they are compiled for the target (what `cargo clippy`
# does with `cargo check`, here with the build): a separate `cargo clippy` checked every
# dependency again for the target, 6 minutes of a cold aarch64 run and 3 of armv7. Every cargo
# command below runs with it, so that none of them rebuilds without it. It covers what is built
# for ARM (libraries, the daemon, unit tests, tests/tiny.rs); the x86 clippy of .ci/run covers
# every target.
export RUSTC_WORKSPACE_WRAPPER=/usr/bin/clippy-driver
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# cargo-deb is a cargo subcommand installed by tools/test-deps.sh (rustup's cargo home).
export PATH="$PATH:$HOME/.cargo/bin"
cargo="/usr/bin/cargo"
say "$($RUSTC --version), target dirs under $target_root"

# The real model (make model) for the one-prompt check; the tiny one is committed.
real_model="$root/models/smollm2"

# `cargo deb` on the cross build, then the checks: architecture, binary for that machine,
# units, config and model.
check_deb() { # triple debian-arch elf-machine [cargo-deb variant]
  local triple=$1 arch=$2 machine=$3 variant=${4:-} out deb
  out=$(mktemp -d)
  deb="$out/edgellm_$arch.deb"
  if [ ! -f "$real_model/model.onnx" ]; then
    say "no prepared model in $real_model (make model): the .deb is not built"
    return 1
  fi
  $cargo deb --no-build --target "$triple" --profile "$profile" --fast ${variant:+--variant "$variant"} \
    --output "$deb" >/dev/null
  local got
  got=$(dpkg-deb -f "$deb" Architecture)
  [ "$got" = "$arch" ] || { say "$deb: Architecture is $got, not $arch"; return 1; }
  local listing
  listing=$(dpkg-deb -c "$deb")
  for path in ./usr/bin/edgellm ./etc/edgellm/edgellm.toml ./usr/lib/systemd/system/edgellm.service \
    ./usr/lib/systemd/system/edgellm.socket ./usr/share/edgellm/models/smollm2/model.onnx \
    ./usr/share/edgellm/models/smollm2/tokenizer.json ./usr/share/edgellm/models/minilm/model.onnx; do
    grep -q " $path\$" <<<"$listing" || { say "$deb lacks $path"; return 1; }
  done
  # ELF e_machine (bytes 18-19, little-endian) of the packaged binary. Unpacked to a file, not
  # piped into `head`: under pipefail the early close kills dpkg-deb with SIGPIPE.
  local elf
  dpkg-deb -x "$deb" "$out/root"
  elf=$(od -An -tu2 -j18 -N2 "$out/root/usr/bin/edgellm" | tr -d ' ')
  [ "$elf" = "$machine" ] || { say "$deb: usr/bin/edgellm is ELF machine $elf, not $machine"; return 1; }
  # The glibc the package asks for covers the newest GLIBC_ symbol version the binary uses.
  local depends needed declared
  depends=$(dpkg-deb -f "$deb" Depends)
  needed=$(readelf -V "$out/root/usr/bin/edgellm" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
  declared=$(grep -o 'libc6[^,]*(>= [0-9.]*)' <<<"$depends" | grep -o '[0-9][0-9.]*' | tail -1)
  [ -n "$declared" ] && dpkg --compare-versions "$needed" le "$declared" ||
    { say "$deb: the binary needs glibc $needed, Depends says: $depends"; return 1; }
  say "$deb: Architecture $arch, ELF machine $machine, binary, units, config and models present; Depends: $depends (the binary needs glibc $needed)"
  rm -rf "$out"
}

# The build is `cargo test --no-run`, which builds the daemon binary too (for the integration
# test), not `cargo build`: the tests' dev-dependencies switch on one more feature of a crate
# under tract-nnef (tempfile asks rustix for "default"), so a `cargo build` followed by the tests
# compiled tract-nnef, tract-onnx, tract-transformers and the engine twice. The binary that runs
# the real model and goes into the .deb is therefore built with the tests' feature set.
aarch64() {
  local t=aarch64-unknown-linux-gnu
  export CARGO_TARGET_DIR="$target_root"
  timed "aarch64 build and clippy" nice -n 10 $cargo test --no-run --profile $profile --locked --target $t --workspace --lib --bins --test tiny
  for cpu in max cortex-a72; do
    say "aarch64 unit tests and the tiny model's golden tokens, QEMU_CPU=$cpu"
    QEMU_CPU=$cpu timed "aarch64 tests ($cpu)" nice -n 10 \
      $cargo test --profile $profile --locked --target $t --workspace --lib --bins --test tiny
  done
  say "the tiny model on tract's own kernels (EDGELLM_ISA=scalar)"
  EDGELLM_ISA=scalar timed "aarch64 tiny (scalar)" nice -n 10 \
    $cargo test --profile $profile --locked --target $t --test tiny
  if [ "${ARM_SKIP_REAL:-}" != 1 ] && [ -f "$real_model/model.onnx" ]; then
    say "the real model under QEMU: What is the capital of France?"
    local answer log
    log=$(mktemp)
    # The compiled-model cache of the QEMU run lives beside the build, not in ~/.cache/edgellm:
    # there the x86 binary's cache would be thrown out and rewritten on every run.
    mkdir -p "$CARGO_TARGET_DIR/$t/model-cache"
    # On a Cortex-A72 (a Raspberry Pi 4): under QEMU's default `max` CPU (SVE, SME...) the same
    # answer took 840 s on a Xeon host (prefill 388 s), against 22 s of prefill as an A72.
    answer=$(RUST_LOG=edgellm_engine=debug CACHE_DIRECTORY="$CARGO_TARGET_DIR/$t/model-cache" QEMU_CPU=cortex-a72 \
      timed "aarch64 real model (cortex-a72)" qemu-aarch64-static \
      "$CARGO_TARGET_DIR/$t/$profile/edgellm" generate --model-dir "$real_model" --max-tokens 24 --stats \
      "What is the capital of France?" 2>"$log") || { cat "$log"; return 1; }
    say "answer: $answer"
    grep -E "q4_matvecs|tok/s|tokens" "$log" | sed 's/^/[arm]   /' || true
    # tract must have packed the 4-bit weights as our NEON kernels read them.
    grep -qE "q4_matvecs=[1-9]" "$log" || { say "no 4-bit product took the NEON kernels"; return 1; }
    grep -q Paris <<<"$answer" || { say "the answer does not name Paris"; return 1; }
    rm -f "$log"
  fi
  timed "arm64 .deb" check_deb $t arm64 183
}

armv7() {
  local t=armv7-unknown-linux-gnueabihf
  export CARGO_TARGET_DIR="$target_root-armv7"
  timed "armv7 build and clippy" nice -n 10 $cargo test --no-run --profile $profile --locked --target $t --workspace --lib --bins --test tiny
  timed "armv7 tests" nice -n 10 $cargo test --profile $profile --locked --target $t --workspace --lib --bins --test tiny
  timed "armhf .deb" check_deb $t armhf 40 armhf
}

for target in "${targets[@]}"; do
  case "$target" in
    aarch64) aarch64 ;;
    armv7) armv7 ;;
    *) say "unknown target $target (aarch64, armv7)"; exit 2 ;;
  esac
done
say "done in $((SECONDS - started)) s"
