#!/usr/bin/env bash
# Installs what tollgate needs, builds a Release binary and starts the
# gateway. Without a config file it runs on the embedded default: DB-less,
# the built-in mock provider (plus any provider whose API key is in the
# environment), and a demo key printed to the terminal.
#   examples/quickstart.sh                      embedded default
#   examples/quickstart.sh --config FILE        your config
set -euo pipefail
cd "$(dirname "$0")/.."
bash cmake/install-deps.sh run
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)"
exec build-release/tollgate "$@"
