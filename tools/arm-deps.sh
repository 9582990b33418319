#!/usr/bin/env bash
# Installs what the ARM builds and tests need (tools/arm.sh), and does nothing when it is there:
# Debian's Rust (`rustc-web`, installed as /usr/bin/rustc, cargo and clippy, sysroot /usr) with
# its standard library for arm64 and armhf, the cross linkers and C libraries, user-mode QEMU.
#
# arm64's standard library comes from apt (multiarch). armhf's too when its index can be read;
# when it cannot (Debian's security archive has served a stale armhf index, which fails
# `apt-get update` and keeps the other indexes from being stored), armhf is left unregistered
# and the two packages of the installed version are fetched from the same archive, checked
# against the sha256 below and unpacked into a sysroot, `$EDGELLM_CACHE/armhf-sysroot`, that
# tools/arm.sh passes to rustc with `--sysroot`.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
cache="${EDGELLM_CACHE:-$HOME/.cache/edgellm}"
sysroot="$cache/armhf-sysroot"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_get() {
  # Other jobs on the machine may hold the dpkg lock for a while.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=900 "$@"
}
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

packages=(rustc-web cargo-web rust-web-clippy libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static)
missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[arm-deps] installing ${missing[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
  apt_get update -qq
  apt_get install -y -qq "${missing[@]}"
fi

version="$(dpkg-query -W -f='${Version}' rustc-web)"
# rustc's own version (1.96) names the runtime package, libstd-rust-web-1.96.
short="$(/usr/bin/rustc --version | sed -E 's/^rustc ([0-9]+\.[0-9]+).*/\1/')"

armhf_ready() {
  installed libstd-rust-web-dev:armhf && [ "$(dpkg-query -W -f='${Version}' libstd-rust-web-dev:armhf)" = "$version" ] && return 0
  [ -f "$sysroot/.version" ] && [ "$(cat "$sysroot/.version")" = "$version" ]
}
if armhf_ready; then
  echo "[arm-deps] ready: rustc-web $version, arm64 and armhf standard libraries, cross linkers, QEMU"
  exit 0
fi

# 1. The plain route: armhf through apt.
if ! dpkg --print-foreign-architectures | grep -qx armhf; then
  $sudo dpkg --add-architecture armhf
fi
if apt_get update -qq && apt_get install -y -qq "libstd-rust-web-dev:armhf=$version"; then
  echo "[arm-deps] armhf standard library from apt"
  exit 0
fi

# 2. The fallback: the two packages from the security pool into a sysroot. armhf is
#    unregistered again so that the next `apt-get update` (ours or anyone's) succeeds.
echo "[arm-deps] apt could not install armhf's standard library; unpacking it into $sysroot"
installed libstd-rust-web-dev:armhf || $sudo dpkg --remove-architecture armhf || true
apt_get update -qq || true
# sha256 of the armhf packages, by rustc-web version, pinned here because the archive's armhf
# index could not be checked against its signed Release (the stale index above); taken from
# that index on 2026-11-30 and matching what the pool serves.
declare -A sums=(
  ["libstd-rust-web-1.96_1.96.0+dfsg1-1~deb12u2"]=dd7e32adeab5f9453577181736f0871a893d23fc10fa152e02d9cee072b13096
  ["libstd-rust-web-dev_1.96.0+dfsg1-1~deb12u2"]=b9f9dd1d03a903680f918cb2bba00a2a3d76558545d5e6a8061072ab461bb989
)
pool="http://deb.debian.org/debian-security/pool/updates/main/r/rustc-web"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$sysroot.new"
mkdir -p "$sysroot.new"
for name in "libstd-rust-web-$short" libstd-rust-web-dev; do
  key="${name}_${version}"
  want="${sums[$key]:-}"
  if [ -z "$want" ]; then
    echo "[arm-deps] no known sha256 for ${key}_armhf.deb (rustc-web moved on?): add it to tools/arm-deps.sh" >&2
    exit 1
  fi
  file="${key/:/%3a}_armhf.deb"
  curl -fsSL --retry 3 -o "$tmp/$file" "$pool/$file"
  echo "$want  $tmp/$file" | sha256sum -c --quiet -
  dpkg-deb -x "$tmp/$file" "$sysroot.new"
done
echo "$version" >"$sysroot.new/.version"
rm -rf "$sysroot"
mv "$sysroot.new" "$sysroot"
echo "[arm-deps] armhf standard library in $sysroot/usr/lib/rustlib/armv7-unknown-linux-gnueabihf"
