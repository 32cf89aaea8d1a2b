#!/usr/bin/env bash
# What billing costs on the request path, in one run: wrk through one
# tollgate (Release, mock provider, access log off) with
#   off:  a config key, no database (the ledger still spools to disk)
#   db:   a database key, the ledger shipping to PostgreSQL
#   full: a database key with a team budget, a key budget, rpm/tpm
#         limits and prepaid credits (leases and rate slices on), the
#         ledger shipping
# and the database statements per 1,000 requests (pg_stat_statements).
#
# Run as root on Debian bookworm:   bash test/bench/billing.sh
#   BILLING_DURATION  wrk time per row (10s)     BILLING_CONNS  connections (16)
#   BILLING_PIN=1  tollgate alone on CPU 0 (PostgreSQL and wrk on CPU 1)
#   BENCH_SKIP_SETUP=1  no apt-get
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
duration=${BILLING_DURATION:-10s}
conns=${BILLING_CONNS:-16}
build=$root/build-bench-keys

if [ "${BENCH_SKIP_SETUP:-0}" != 1 ]; then
    bash cmake/install-deps.sh bench
    dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=ON >/dev/null
cmake --build "$build" -j2 --target tollgate >/dev/null

run=$(mktemp -d /tmp/tollgate-billing.XXXXXX)
pgdir=$(mktemp -d /tmp/tgpg.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    bash "$root/test/pgtmp.sh" stop "$pgdir" || true
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

conninfo=$(bash "$root/test/pgtmp.sh" start "$pgdir")
"$build/tollgate" migrate --database-url "$conninfo" >/dev/null
psql -X -q -d "$conninfo" -c "CREATE EXTENSION pg_stat_statements"
master="tg-bench-master-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cfgkey="tg-bench-config-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
secret=$("$build/tollgate" keygen)

# start NAME YAML_EXTRA -> port
start() {
    local name=$1 extra=$2
    mkdir -p "$run/$name"
    cat >"$run/$name/tollgate.yaml" <<EOF
listen: 127.0.0.1:0
log: {level: info, access: false}
ledger: {spool_dir: "$run/$name/spool"}
providers: [{name: mock, type: mock, mock: {default_tokens: 16}}]
models: [{name: mock-1, provider: mock, price: {input: "0.15", output: "0.60"}}]
keys: [{key: "$cfgkey", alias: config}]
$extra
EOF
    (cd "$run/$name" && exec "$build/tollgate" --config tollgate.yaml >out.log 2>err.log) &
    pids+=($!)
    local port=
    for _ in $(seq 1 100); do
        port=$(cat "$run/$name/err.log" "$run/$name/out.log" | grep -o 'listening on 127.0.0.1:[0-9]*' | head -1 | cut -d: -f2 || true)
        if [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null; then break; fi
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null || { cat "$run/$name/err.log" >&2; exit 1; }
    echo "$port"
}

off=$(start off "")
db_extra="database: {url: \"$conninfo\", pool_size: 2}
secrets: {keys: \"$secret\"}
admin: {master_key: \"$master\"}"
db=$(start db "$db_extra")

admin() { curl -sf -H "Authorization: Bearer $master" -d "$2" "http://127.0.0.1:$db/admin/$1"; }
jid() { python3 -c 'import sys,json;print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
org=$(admin organizations '{"name":"bench"}' | jid id)
plain_team=$(admin teams "{\"org_id\":\"$org\",\"name\":\"plain\",\"credit_limit\":null}" | jid id)
plain_key=$(admin keys "{\"team_id\":\"$plain_team\",\"alias\":\"plain\"}" | jid key)
full_team=$(admin teams "{\"org_id\":\"$org\",\"name\":\"full\",\"max_budget\":\"100000\",\"budget_duration\":\"1d\",\"rpm\":100000000,\"tpm\":100000000000}" | jid id)
admin "teams/$full_team/credits" '{"kind":"topup","amount":"1000000"}' >/dev/null
full_key=$(admin keys "{\"team_id\":\"$full_team\",\"alias\":\"full\",\"max_budget\":\"100000\",\"rpm\":100000000}" | jid key)

# BILLING_PIN=1: tollgate on CPU 0, PostgreSQL and wrk on CPU 1, so the
# rows compare what tollgate itself spends (not PostgreSQL's inserts on
# the gateway's core)
wrk=(wrk)
if [ "${BILLING_PIN:-0}" = 1 ]; then
    for p in "${pids[@]}"; do taskset -a -p 1 "$p" >/dev/null; done
    for p in $(pgrep -u postgres postgres); do taskset -p 2 "$p" >/dev/null; done
    wrk=(taskset -c 1 wrk)
fi

body='{"model":"mock-1","max_tokens":16,"messages":[{"role":"user","content":"Hello"}]}'
cat >"$run/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
EOF
rps_of() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
reqs_of() { awk '/requests in/ {print $1}' "$1"; }
p50_of() { awk '/^ +50%/ {print $2}' "$1"; }
p99_of() { awk '/^ +99%/ {print $2}' "$1"; }
stmts() { psql -X -A -t -d "$conninfo" -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"; }

printf '| row | RPS | p50 | p99 | DB statements / 1000 requests |\n|---|---:|---:|---:|---:|\n'
for row in off db full; do
    port=$db; key=$plain_key
    [ $row = off ] && { port=$off; key=$cfgkey; }
    [ $row = full ] && key=$full_key
    KEY=$key "${wrk[@]}" -t1 -c"$conns" -d2s -s "$run/post.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
    sleep 1
    before=$(stmts)
    KEY=$key "${wrk[@]}" -t1 -c"$conns" -d"$duration" --latency -s "$run/post.lua" \
        "http://127.0.0.1:$port/v1/chat/completions" >"$run/wrk-$row.txt"
    sleep 1
    after=$(stmts)
    n=$(reqs_of "$run/wrk-$row.txt")
    per=$(awk -v a="$before" -v b="$after" -v n="$n" 'BEGIN { printf "%.2f", (b - a) * 1000 / n }')
    [ $row = off ] && per="0 (no database)"
    printf '| %s | %s | %s | %s | %s |\n' "$row" "$(rps_of "$run/wrk-$row.txt")" "$(p50_of "$run/wrk-$row.txt")" \
        "$(p99_of "$run/wrk-$row.txt")" "$per"
    grep -E "Non-2xx" "$run/wrk-$row.txt" || true
done
