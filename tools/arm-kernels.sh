#!/usr/bin/env bash
# A quick loop for kernel work: the kernels crate (NEON 4-bit product and attention, Isa
# detection, the spin team) cross-built for aarch64 with Debian's Rust, clippy-clean, and its
# tests against the scalar reference under user-mode QEMU on two CPUs: QEMU's default (NEON
# with dotprod) and cortex-a72 (plain NEON). The kernels crate has no tract dependency, so
# this takes minutes from cold. CI runs the whole stage instead (tools/arm.sh), which runs
# these tests too.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${EDGELLM_CACHE:-$HOME/.cache/edgellm}"
tools/arm-deps.sh
export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_HOME="${EDGELLM_ARM_CARGO_HOME:-$cache/armcargo}"
export CARGO_TARGET_DIR="${EDGELLM_ARM_TARGET_DIR:-$cache/armtarget}/kernels"
export CARGO_TERM_COLOR=never
unset RUSTFLAGS CARGO_BUILD_TARGET
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# No `-L` for qemu-aarch64 (see README, ARM): it would pair the wrong loader and libc.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
target=aarch64-unknown-linux-gnu
echo "[arm-kernels] $($RUSTC --version)"
/usr/bin/cargo clippy --release --locked -p edgellm-kernels --all-targets --target $target -- -D warnings
for cpu in max cortex-a72; do
  echo "[arm-kernels] tests under QEMU_CPU=$cpu"
  QEMU_CPU=$cpu /usr/bin/cargo test --release --locked -p edgellm-kernels --target $target
done
