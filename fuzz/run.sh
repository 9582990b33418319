#!/usr/bin/env bash
# Bounded fuzzing of every target (FUZZ_SECONDS each, default 40), seeded from the corpus in
# the repo; new inputs go to a temp dir so the repo's corpus stays small. Crashes land in
# fuzz/artifacts/<target>/ and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-40}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${EDGELLM_CACHE:-$HOME/.cache/edgellm}/fuzz-target}"
# cargo-fuzz passes nightly-only flags (-Z sanitizer...); the stable compiler accepts them
# with RUSTC_BOOTSTRAP, and this machine has no other toolchain.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
for target in request_parser preprocess safety_scan; do
  work=$(mktemp -d)
  echo "[fuzz] $target for ${secs}s"
  cargo fuzz run "$target" "$work" "fuzz/corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 \
    | grep -E "^(Done|#[0-9]+ +DONE|==|SUMMARY|thread|panicked|Failing input)" || true
  status=${PIPESTATUS[0]}
  rm -rf "$work"
  [ "$status" -eq 0 ] || { echo "[fuzz] $target failed"; exit 1; }
done
