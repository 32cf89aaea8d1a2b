#!/usr/bin/env bash
# Tokenizer benchmark: `tollgate tokenize --bench N` against the npm package
# tiktoken (1.0.22, WASM) encode_ordinary, for o200k_base and cl100k_base,
# on the whole valid-UTF-8 corpus of test/data/tokenizer/ concatenated and on
# English prose alone. Checks that both count the same tokens, prints a table
# and writes it to test/bench/results/tokenizer-<UTC timestamp>.txt.
#
#   bash test/bench/tokenizer.sh
# Environment (all optional):
#   TOLLGATE_BIN    the binary to measure; unset: build Release in build-bench/
#   BENCH_SECONDS   measured seconds per cell and tool (2)
# Exit 0: all measured and the counts agree; 1: anything else.
# See test/bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/test/bench

die() { echo "tokenizer bench: $*" >&2; exit 1; }

seconds=${BENCH_SECONDS:-2}
[[ $seconds =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || die "BENCH_SECONDS: not a number of seconds: $seconds"
command -v node >/dev/null || die "node not found"

# tiktoken first: the build may read its encoders/*.json to make the rank files
if [ ! -d "$root/test/integration/node_modules/tiktoken" ]; then
    (cd "$root/test/integration" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi

if [ -z "${TOLLGATE_BIN:-}" ]; then
    cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=OFF >/dev/null
    cmake --build "$root/build-bench" -j2 >/dev/null
    TOLLGATE_BIN=$root/build-bench/tollgate
fi
[ -x "$TOLLGATE_BIN" ] || die "not an executable: $TOLLGATE_BIN"
TOLLGATE_BIN=$(cd "$(dirname "$TOLLGATE_BIN")" && pwd)/$(basename "$TOLLGATE_BIN")
export TOLLGATE_BIN BENCH_SECONDS=$seconds

mkdir -p "$here/results"
result="$here/results/tokenizer-$(date -u +%Y%m%dT%H%M%SZ).txt"
# node's exit status survives the tee (pipefail)
if node "$here/tokenizer_bench.mjs" | tee "$result.part"; then
    mv "$result.part" "$result"
    echo "saved: ${result#"$root"/}"
else
    if [ -s "$result.part" ]; then
        mv "$result.part" "$result"
        echo "saved: ${result#"$root"/} (FAILED run)" >&2
    else
        rm -f "$result.part"
    fi
    exit 1
fi
