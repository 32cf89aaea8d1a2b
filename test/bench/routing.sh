#!/usr/bin/env bash
# What a fallback costs: wrk through one tollgate (Release, mock provider,
# access log off) against
#   direct:    an alias with one route (the mock)
#   fallback:  an alias whose first route fails fast (connection refused
#              on 127.0.0.1) and whose second is the same mock; retries
#              off (routing.retries.attempts 1) and the circuit breaker
#              kept closed, so every call pays one failed attempt
#   breaker:   the same two routes with the default breaker: after the
#              first failures the dead route is skipped
# at 1 and 16 connections, with the added latency (p50 and p99 against
# direct) of each.
#
# Run as root on Debian bookworm:   bash test/bench/routing.sh
#   ROUTING_DURATION  wrk time per row (10s)     BENCH_SKIP_SETUP=1  no apt-get
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
duration=${ROUTING_DURATION:-10s}
build=$root/build-bench-routing

if [ "${BENCH_SKIP_SETUP:-0}" != 1 ]; then
    bash cmake/install-deps.sh bench
fi
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target tollgate >/dev/null

run=$(mktemp -d /tmp/tollgate-routing.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# a port with nothing listening
dead=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
key="tg-bench-routing-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$run/tollgate.yaml" <<EOF
listen: 127.0.0.1:0
log: {level: info, access: false}
ledger: {spool_dir: "$run/spool"}
routing:
  retries: {attempts: 1}
providers:
  - {name: mock, type: mock, mock: {default_tokens: 16}}
  - name: dead
    type: openai_compatible
    base_url: "http://127.0.0.1:$dead/v1"
    timeouts: {connect: 1s}
models:
  - {name: direct, provider: mock, model: mock-1}
  - name: fallback
    routes: [{provider: dead, model: x}, {provider: mock, model: mock-1}]
  - name: breaker
    routes: [{provider: dead, model: x}, {provider: mock, model: mock-1}]
keys: [{key: "$key", alias: bench}]
EOF
# the same with a breaker that never opens (the direct and fallback rows)
sed -e 's/^routing:$/routing:\n  breaker: {failures: 1000000, min_requests: 1000000, error_rate: 100}/' \
    "$run/tollgate.yaml" >"$run/nobreaker.yaml"

start() { # config -> pid, port
    "$build/tollgate" check-config "$1" >/dev/null
    (cd "$run" && exec "$build/tollgate" --config "$1" >"$run/out.log" 2>"$run/err.log") &
    pid=$!
    port=
    for _ in $(seq 1 100); do
        port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$run/err.log" | head -1 | cut -d: -f2 || true)
        if [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null; then break; fi
        sleep 0.1
    done
}
stop() {
    kill "$pid" && wait "$pid" 2>/dev/null || true
    pid=
    rm -rf "$run/spool"
}

cat >"$run/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
wrk.body = '{"model":"' .. os.getenv("MODEL") .. '","max_tokens":16,"messages":[{"role":"user","content":"Hello"}]}'
EOF
us() { # wrk's "123.45us" / "1.23ms" / "1.2s" as microseconds
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else print n * 1000000 }'
}
measure() { # port model conns -> "rps p50 p99" (p50/p99 in us)
    KEY=$key MODEL=$2 wrk -t1 -c"$3" -d2s -s "$run/post.lua" "http://127.0.0.1:$1/v1/chat/completions" >/dev/null
    KEY=$key MODEL=$2 wrk -t1 -c"$3" -d"$duration" --latency -s "$run/post.lua" \
        "http://127.0.0.1:$1/v1/chat/completions" >"$run/wrk.txt"
    if grep -q "Non-2xx" "$run/wrk.txt"; then
        echo "non-2xx answers for $2:" >&2
        grep "Non-2xx" "$run/wrk.txt" >&2
        exit 1
    fi
    echo "$(awk '/^Requests\/sec:/ {print $2}' "$run/wrk.txt") $(us "$(awk '/^ +50%/ {print $2}' "$run/wrk.txt")") $(us "$(awk '/^ +99%/ {print $2}' "$run/wrk.txt")")"
}

printf '| row | conns | RPS | p50 | p99 | added p50 | added p99 |\n|---|---:|---:|---:|---:|---:|---:|\n'
for conns in 1 16; do
    start "$run/nobreaker.yaml"
    read -r d_rps d_p50 d_p99 < <(measure "$port" direct "$conns")
    read -r f_rps f_p50 f_p99 < <(measure "$port" fallback "$conns")
    stop
    start "$run/tollgate.yaml"
    read -r b_rps b_p50 b_p99 < <(measure "$port" breaker "$conns")
    stop
    for row in "direct $d_rps $d_p50 $d_p99" "fallback $f_rps $f_p50 $f_p99" "breaker $b_rps $b_p50 $b_p99"; do
        set -- $row
        awk -v name="$1" -v c="$conns" -v rps="$2" -v p50="$3" -v p99="$4" -v d50="$d_p50" -v d99="$d_p99" \
            'BEGIN { printf "| %s | %d | %.0f | %.0f us | %.0f us | %+.0f us | %+.0f us |\n", name, c, rps, p50, p99, p50 - d50, p99 - d99 }'
    done
done
