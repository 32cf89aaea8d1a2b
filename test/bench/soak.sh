#!/usr/bin/env bash
# Soak test (issue 8): SOAK_MINUTES (30) of mixed load on one Release
# tollgate with injected upstream faults and two PostgreSQL restarts; RSS
# growth and leaked fds reported, the ledger checked against what the
# client saw. Not part of CI. The load itself is soak.mjs (its header says
# what runs and what fails the run).
#
#   bash test/bench/soak.sh                         # about 32 minutes
#   SOAK_MINUTES=3 bash test/bench/soak.sh          # a quick look
# Environment (all optional):
#   SOAK_MINUTES         minutes of load (30; at least 3)
#   SOAK_CONCURRENCY     calls in flight (32)
#   SOAK_SEED            seed of the call mix (1)
#   SOAK_OUTAGE_SECONDS  how long each PostgreSQL restart keeps it down (10)
#   SOAK_RESTART_AT      when PostgreSQL restarts, fractions of the run (0.5,0.667)
#   SOAK_SKIP_SETUP=1    no apt-get / npm; still builds build-soak/ unless
#                        TOLLGATE_BIN is set
#   TOLLGATE_BIN         the binary to soak; unset: build Release in build-soak/
#   SOAK_KEEP_RUN=1      keep the run directory (tollgate's access log)
# Output: a table on stdout and test/bench/results/soak-<UTC>.txt, the
# samples in soak-<UTC>.csv. Exit 0: no crash, exit 0 on SIGTERM, ledger
# exact, fds and RSS flat; 1 otherwise. See test/bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

die() { echo "soak: $*" >&2; exit 1; }

minutes=${SOAK_MINUTES:-30}
[[ $minutes =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "SOAK_MINUTES: not a number of minutes: $minutes"
[[ ${SOAK_CONCURRENCY:-32} =~ ^[1-9][0-9]*$ ]] || die "SOAK_CONCURRENCY: not a positive integer"

if [ "${SOAK_SKIP_SETUP:-0}" != 1 ]; then
    bash cmake/install-deps.sh test   # node, PostgreSQL, the build's libraries
    # soak.mjs needs no npm package, but the build may read tiktoken's data;
    # npm ci only when nothing is installed (it would pull the tree from
    # under a test suite running beside us)
    if [ ! -d test/integration/node_modules ]; then
        (cd test/integration && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
    fi
fi
command -v node >/dev/null || die "node not found (bash cmake/install-deps.sh test)"
command -v psql >/dev/null || die "psql not found (bash cmake/install-deps.sh test)"

if [ -z "${TOLLGATE_BIN:-}" ]; then
    cmake -S "$root" -B "$root/build-soak" -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=OFF >/dev/null
    cmake --build "$root/build-soak" -j2 >/dev/null
    TOLLGATE_BIN=$root/build-soak/tollgate
fi
[ -x "$TOLLGATE_BIN" ] || die "not an executable: $TOLLGATE_BIN"
TOLLGATE_BIN=$(cd "$(dirname "$TOLLGATE_BIN")" && pwd)/$(basename "$TOLLGATE_BIN")
export TOLLGATE_BIN SOAK_MINUTES=$minutes

# node stops tollgate, the mock upstream and PostgreSQL itself, also on
# Ctrl-C (SIGINT reaches it with the rest of the foreground group)
exec node "$root/test/bench/soak.mjs"
