#!/usr/bin/env bash
# Installs what the tests need and a fresh machine lacks: mosquitto and its clients, openssl,
# systemd's tools, socat, curl, cargo-deb (the package test) and the Python venv of the HTTP
# clients (tools/test-venv.sh). `make test` and `.ci/run` both call
# it; it does nothing when everything is there. Needs root (or sudo) only to install packages.
set -euo pipefail
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_rr >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v dpkg-deb >/dev/null 2>&1 || need_apt+=(dpkg)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "[deps] installing ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "[deps] installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi
# The pinned Python clients of tests/http.rs (openai, httpx, prometheus_client), in a venv
# kept outside the clone.
"$(dirname "$0")/test-venv.sh" >/dev/null
