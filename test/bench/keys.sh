#!/usr/bin/env bash
# Key lookup cost on the request path, two ways, in one run:
#   1. tg-bench-keys: ns per lookup (SHA-256 + config probe + tenancy
#      cache probe) with KEYS_N database keys cached;
#   2. wrk through one tollgate (Release, mock provider, access log off)
#      with a config key and with a database key of a migrated throwaway
#      PostgreSQL holding KEYS_N keys, interleaved, as a ratio.
#
# Run as root on Debian bookworm:   bash test/bench/keys.sh
#   KEYS_N          database keys (100000)
#   KEYS_DURATION   wrk time per cell (10s)
#   KEYS_CONNS      wrk connections ("1 16")
#   BENCH_SKIP_SETUP=1  no apt-get, reuse build-bench-keys/
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
n=${KEYS_N:-100000}
duration=${KEYS_DURATION:-10s}
conns_list=${KEYS_CONNS:-"1 16"}
build=$root/build-bench-keys

if [ "${BENCH_SKIP_SETUP:-0}" != 1 ]; then
    bash cmake/install-deps.sh bench
    dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=ON >/dev/null
cmake --build "$build" -j2 --target tollgate tg-bench-keys >/dev/null

run=$(mktemp -d /tmp/tollgate-keys.XXXXXX)
pgdir=$(mktemp -d /tmp/tgpg.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    bash "$root/test/pgtmp.sh" stop "$pgdir" || true
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== 1. lookup cost (tg-bench-keys $n)"
"$build/tg-bench-keys" "$n" 2000000 | tee "$run/micro.txt"

echo
echo "== 2. end to end: wrk, config key vs database key ($n keys in the database)"
conninfo=$(bash "$root/test/pgtmp.sh" start "$pgdir")
"$build/tollgate" migrate --database-url "$conninfo" >/dev/null
dbkey="tg-bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
psql -X -q -d "$conninfo" -v ON_ERROR_STOP=1 -v n="$n" -v k="$dbkey" <<'SQL'
INSERT INTO organizations (name) VALUES ('bench');
INSERT INTO teams (org_id, name) SELECT id, 'bench' FROM organizations;
INSERT INTO virtual_keys (key_hash, key_prefix, alias, team_id)
  SELECT sha256(convert_to('tg-filler-' || g, 'UTF8')), 'tg-filler', 'filler-' || g, t.id
  FROM generate_series(1, :n - 1) g, teams t;
INSERT INTO virtual_keys (key_hash, key_prefix, alias, team_id)
  SELECT sha256(convert_to(:'k', 'UTF8')), 'tg-bench', 'bench', id FROM teams;
SQL
cfgkey="tg-config-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$run/tollgate.yaml" <<EOF
listen: 127.0.0.1:0
log: {level: info, access: false}
database: {url: "$conninfo", pool_size: 2}
secrets: {keys: "$("$build/tollgate" keygen)"}
providers: [{name: mock, type: mock, mock: {default_tokens: 16}}]
models: [{name: mock-1, provider: mock}]
keys: [{key: "$cfgkey", alias: config}]
EOF
"$build/tollgate" --config "$run/tollgate.yaml" >"$run/out.log" 2>"$run/err.log" &
pid=$!
port=
for _ in $(seq 1 100); do
    port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$run/err.log" | head -1 | cut -d: -f2 || true)
    if [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null; then break; fi
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null || { cat "$run/err.log" >&2; exit 1; }
grep -o 'tenancy cache loaded: [^,]*, [0-9]* keys' "$run/err.log" || true

body='{"model":"mock-1","messages":[{"role":"user","content":"Hello"}]}'
cat >"$run/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
EOF
for k in "$cfgkey" "$dbkey"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $k" \
        -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port/v1/chat/completions")
    [ "$code" = 200 ] || { echo "key check failed: $code" >&2; exit 1; }
done

rps_of() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
p50_of() { awk '/^ +50%/ {print $2}' "$1"; }
p99_of() { awk '/^ +99%/ {print $2}' "$1"; }
printf '\n| conns | key | RPS | p50 | p99 |\n|---:|---|---:|---:|---:|\n'
for c in $conns_list; do
    for which in config database; do
        k=$cfgkey; [ $which = database ] && k=$dbkey
        KEY=$k wrk -t1 -c"$c" -d2s -s "$run/post.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
        KEY=$k wrk -t1 -c"$c" -d"$duration" --latency -s "$run/post.lua" \
            "http://127.0.0.1:$port/v1/chat/completions" >"$run/wrk-$c-$which.txt"
        printf '| %s | %s | %s | %s | %s |\n' "$c" "$which" "$(rps_of "$run/wrk-$c-$which.txt")" \
            "$(p50_of "$run/wrk-$c-$which.txt")" "$(p99_of "$run/wrk-$c-$which.txt")"
    done
    awk -v a="$(rps_of "$run/wrk-$c-database.txt")" -v b="$(rps_of "$run/wrk-$c-config.txt")" -v c="$c" \
        'BEGIN { printf "| %s | database / config RPS | %.3f | | |\n", c, a / b }'
done
