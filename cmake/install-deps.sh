#!/usr/bin/env bash
# Installs what tollgate needs from Debian bookworm's archive (run as root).
#   install-deps.sh run    build + run the gateway
#   install-deps.sh test   also the test suite's tools (cmocka, node/npm, PostgreSQL, nginx, ...)
#   install-deps.sh bench  also the benchmarks' tools (wrk, nginx, PostgreSQL for proof.sh)
set -euo pipefail
mode=${1:-run}

pkgs=(build-essential cmake pkg-config ca-certificates openssl curl python3
      libuv1-dev libmbedtls-dev node-llhttp libjansson-dev libjsmn-dev
      libyaml-dev libpq-dev libpcre2-dev)
case "$mode" in
  run) ;;
  test) pkgs+=(libcmocka-dev postgresql clang python3 python3-cryptography prometheus nginx-light) ;;
  bench) pkgs+=(libcmocka-dev wrk nginx-light postgresql) ;;
  *) echo "usage: $0 run|test|bench" >&2; exit 2 ;;
esac
# npm fetches the tokenizer's rank data (npm package tiktoken) at build
# time, in every mode; Node.js also runs the SDK test clients. Keep a newer
# node if present.
if ! command -v node >/dev/null; then pkgs+=(nodejs npm); fi
if ! command -v npm >/dev/null; then pkgs+=(npm); fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
