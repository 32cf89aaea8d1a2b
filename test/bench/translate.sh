#!/usr/bin/env bash
# Translation benchmark: what re-encoding an answer event by event costs.
# One tollgate (Release) serves streamed chat calls from its built-in mock
# provider, which speaks OpenAI, Anthropic or Gemini; callers speak OpenAI
# or Anthropic. For every caller/upstream pair the table gives requests/s
# and tollgate's own time per call (overhead_us of the access log: parsing,
# routing, decoding, translating, metering -- not the mock's work) and per
# SSE event, next to the passthrough pair of the same caller format.
#
#   bash test/bench/translate.sh
# Environment (all optional):
#   TOLLGATE_BIN     the binary to measure; unset: build Release in build-bench/
#   BENCH_REQUESTS   measured streamed calls per pair (2000)
#   BENCH_TOKENS     mock answer length = SSE content events per stream (64)
#   BENCH_CONCURRENCY  calls in flight (8)
# Exit 0 when every call succeeded. See test/bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/test/bench

die() { echo "translate bench: $*" >&2; exit 1; }
command -v node >/dev/null || die "node not found (bash cmake/install-deps.sh bench)"

if [ -z "${TOLLGATE_BIN:-}" ]; then
    cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=OFF >/dev/null
    cmake --build "$root/build-bench" -j2 >/dev/null
    TOLLGATE_BIN=$root/build-bench/tollgate
fi
[ -x "$TOLLGATE_BIN" ] || die "not an executable: $TOLLGATE_BIN"
export TOLLGATE_BIN

mkdir -p "$here/results"
result="$here/results/translate-$(date -u +%Y%m%dT%H%M%SZ).txt"
if node "$here/translate_bench.mjs" | tee "$result.part"; then
    mv "$result.part" "$result"
    echo "saved: ${result#"$root"/}"
else
    rm -f "$result.part"
    exit 1
fi
