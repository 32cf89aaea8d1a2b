#!/usr/bin/env bash
# The proof benchmark (issue 8): one script, one run, one table with ratios
# against baselines measured in the same invocation, on 127.0.0.1.
#
#   a. core: wrk, non-streaming chat completions at 1/16/64/256 connections:
#      direct to the mock upstream, through nginx proxy_pass, through
#      tollgate with PostgreSQL (a database key, team and key budgets with
#      leases, prepaid credits, rpm/tpm, metering, the ledger shipping)
#   b. the Portkey AI gateway (npm @portkey-ai/gateway) over the same upstream
#   c. streaming: streams/s and time to first token (test/bench/sse_load.c)
#   d. 10,000 concurrent SSE streams held through tollgate: RSS, stalls
#   e. tokenizer: tollgate against npm tiktoken (WASM), MB/s
#
# The upstream is a tollgate process answering with its built-in mock, as in
# run.sh. Prints the table and writes it to
# test/bench/results/proof-<UTC timestamp>.txt. Exit 0: every row measured
# cleanly; 1: a row failed (listed under FAILED; the run directory is kept).
#
# Run as root on Debian bookworm:   bash test/bench/proof.sh   (about 9 minutes)
#   PROOF_QUICK=1 bash test/bench/proof.sh                      (about 2 minutes, a dry run)
# Environment (all optional; see docs/performance.md):
#   PROOF_DURATION            measured time per wrk / sse_load cell (10s; quick 1s)
#   PROOF_WARMUP              warm-up before each cell, 0 = none (2s; quick 0)
#   PROOF_CONNECTIONS         core rows ("1 16 64 256")
#   PROOF_PORTKEY_CONNECTIONS Portkey rows ("16")
#   PROOF_STREAM_CONNECTIONS  streaming rows (16)
#   PROOF_STREAMS             held streams (10000; quick 1000)
#   PROOF_HOLD_SECONDS        how long all of them stay open at once (25; quick 4)
#   PROOF_HOLD_RATE           new streams per second while ramping up (500)
#   PROOF_STALL_MS            a gap between two reads of a held stream above this is a stall (3000)
#   PROOF_TOKENIZER_SECONDS   measured seconds per tokenizer cell and tool (2; quick 0.3)
#   PROOF_THREADS             wrk threads, capped at the connections (1)
#   PROOF_WORKERS             tollgate's workers (1: one loop, as nginx runs one worker)
#   PROOF_SECTIONS            which parts to run ("a b c d e")
#   PROOF_PG_STATS=1          print PostgreSQL's statements by total time (pg_stat_statements) at the end
#   BENCH_SKIP_SETUP=1        no apt-get and no cmake build; use PROOF_BIN
#   PROOF_BIN                 tollgate binary (build-proof/tollgate)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/test/bench
bench_name=proof
. "$here/lib.sh"

quick=${PROOF_QUICK:-0}
if [ "$quick" = 1 ]; then
    q_dur=1s q_warm=0 q_streams=1000 q_hold=4 q_tok=0.3
else
    q_dur=10s q_warm=2s q_streams=10000 q_hold=25 q_tok=2
fi
duration=${PROOF_DURATION:-$q_dur}
warmup=${PROOF_WARMUP:-$q_warm}
conns_list=${PROOF_CONNECTIONS:-"1 16 64 256"}
pk_conns_list=${PROOF_PORTKEY_CONNECTIONS:-16}
stream_conns=${PROOF_STREAM_CONNECTIONS:-16}
streams=${PROOF_STREAMS:-$q_streams}
hold_s=${PROOF_HOLD_SECONDS:-$q_hold}
hold_rate=${PROOF_HOLD_RATE:-500}
stall_ms=${PROOF_STALL_MS:-3000}
tok_seconds=${PROOF_TOKENIZER_SECONDS:-$q_tok}
threads=${PROOF_THREADS:-1}
gw_workers=${PROOF_WORKERS:-1}
sections=${PROOF_SECTIONS:-"a b c d e"}
has() { [[ " $sections " == *" $1 "* ]]; }
build=$root/build-proof
bin=${PROOF_BIN:-$build/tollgate}

dur_s=$(secs_of "$duration") || die "PROOF_DURATION: not a duration: $duration"
warm_s=$(secs_of "$warmup") || die "PROOF_WARMUP: not a duration: $warmup"
[ "$dur_s" -ge 1 ] && [ "$dur_s" -le 600 ] || die "PROOF_DURATION: 1s..10m"
[ "$warm_s" -le 60 ] || die "PROOF_WARMUP: at most 60s"
for v in $conns_list $pk_conns_list $stream_conns $streams $hold_s $hold_rate $stall_ms $threads $gw_workers; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || die "not a positive number: $v"
done
[ "$streams" -le 100000 ] && [ "$hold_s" -le 600 ] || die "PROOF_STREAMS <= 100000, PROOF_HOLD_SECONDS <= 600"
[[ $tok_seconds =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || die "PROOF_TOKENIZER_SECONDS: not a number: $tok_seconds"

# ---- 1. tools, a Release binary, the load client, the npm packages ---------
if [ "${BENCH_SKIP_SETUP:-0}" != 1 ]; then
    bash cmake/install-deps.sh bench
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=OFF >/dev/null
    cmake --build "$build" -j2 >/dev/null
fi
for t in wrk nginx curl timeout node npm python3 psql cc; do
    command -v "$t" >/dev/null || die "$t not found (run without BENCH_SKIP_SETUP=1)"
done
[ -x "$bin" ] || die "no tollgate binary at $bin"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || die "PostgreSQL server not installed"

# sse_load: compiled here (not part of the CMake build), with Debian's llhttp sources
sse_load=$build/sse_load
if [ ! -x "$sse_load" ] || [ "$here/sse_load.c" -nt "$sse_load" ]; then
    mkdir -p "$build/sse_load.objs"
    for f in api http llhttp; do
        cc -O2 -w -c "/usr/share/llhttp/$f.c" -I/usr/share/include/llhttp -o "$build/sse_load.objs/$f.o"
    done
    cc -O2 -g -Wall -Wextra -o "$sse_load" "$here/sse_load.c" "$build"/sse_load.objs/*.o \
        -I/usr/share/include/llhttp -luv || die "could not build sse_load"
fi
pk_dir=$here/portkey
if [ ! -f "$pk_dir/node_modules/@portkey-ai/gateway/build/start-server.js" ] ||
    [ "$pk_dir/package-lock.json" -nt "$pk_dir/node_modules/.package-lock.json" ]; then
    (cd "$pk_dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $pk_dir failed"
fi
if [ ! -d "$root/test/integration/node_modules/tiktoken" ]; then
    (cd "$root/test/integration" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi
pk_version=$(node -p "require('$pk_dir/node_modules/@portkey-ai/gateway/package.json').version")
hono_version=$(node -p "require('$pk_dir/node_modules/@hono/node-server/package.json').version")

# descriptors: every held stream is one socket in the client, and two in
# tollgate (caller + upstream). Only root with CAP_SYS_RESOURCE may raise
# the hard limit, so take what it allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
[ "$nofile" != unlimited ] || nofile=1048576

# ---- 2. PostgreSQL, the upstream, tollgate, nginx, Portkey -------------------
pgdir=""
bench_after_stop() { [ -z "$pgdir" ] || bash "$root/test/pgtmp.sh" stop "$pgdir" >/dev/null 2>&1 || true; }
bench_init tollgate-proof
pgdir=$(mktemp -d /tmp/tgpg.XXXXXX)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
echo "$bench_name: run directory $run" >&2

conninfo=$(bash "$root/test/pgtmp.sh" start "$pgdir") || die "PostgreSQL did not start"
pm_pid=$(head -n1 "$pgdir/data/postmaster.pid")
bench_parent_pids+=("$pm_pid")
pg_version=$(psql -X -A -t -d "$conninfo" -c "SHOW server_version" | cut -d' ' -f1)
"$bin" migrate --database-url "$conninfo" >"$run/migrate.log" 2>&1 || { cat "$run/migrate.log" >&2; die "migrate failed"; }

up_key="tg-proof-upstream-$(rand_hex 16)"
master="tg-proof-master-$(rand_hex 16)"
secret=$("$bin" keygen)
up_model=mock-1
gw_model=bench-model
price='price: {input: "0.15", output: "0.60"}'
hold_tokens=$(( (streams + hold_rate - 1) / hold_rate + 2 + hold_s ))   # ramp + hold, 1 token/s

# The upstream: tollgate with two mocks, fast (every row but d) and paced at
# one token a second (the held streams of d: -t tokens last that many seconds).
cat >"$run/upstream.yaml" <<EOF
listen: "127.0.0.1:0"
workers: 1
log: {level: info, access: false}
timeouts: {drain: 2s}
ledger: {spool_dir: "$run/upstream-spool"}
providers:
  - {name: mock, type: mock, mock: {latency: 0ms, default_tokens: 16}}
  - {name: slow, type: mock, mock: {latency: 0ms, default_tokens: 16, tokens_per_sec: 1}}
models:
  - {name: $up_model, provider: mock}
  - {name: mock-slow, provider: slow}
keys:
  - {key: $up_key, alias: bench-upstream}
EOF
start upstream "$run/upstream.out" "$run/upstream.err" "$bin" --config "$run/upstream.yaml"
up_idx=$((${#pids[@]} - 1))
uport=$(tollgate_port "$up_idx" "$run/upstream.out")
up_pid=${pids[up_idx]}

# tollgate: the database holds the key, its team and their budgets; every
# call is admitted against leases, metered, written to the JSON access log
# (stdout, a file) and to the ledger (spool, then PostgreSQL). The pool
# allows one upstream connection per held stream and lets idle ones go soon
# (so the held streams' connections are gone before the next part).
cat >"$run/tollgate.yaml" <<EOF
listen: "127.0.0.1:0"
workers: $gw_workers
log: {level: info, access: true}
timeouts: {drain: 2s}
database: {url: "$conninfo"}
secrets: {keys: "$secret"}
admin: {master_key: "$master"}
ledger: {spool_dir: "$run/tollgate-spool"}
providers:
  - name: bench-up
    type: openai_compatible
    base_url: http://127.0.0.1:$uport/v1
    api_key: $up_key
    pool: {max_connections: 65535, idle_timeout: 2s}
  - {name: local-slow, type: mock, mock: {latency: 0ms, default_tokens: 16, tokens_per_sec: 1}}
models:
  - {name: $gw_model, provider: bench-up, model: $up_model, $price}
  - {name: bench-slow, provider: bench-up, model: mock-slow, $price}
  - {name: bench-local-slow, provider: local-slow, $price}
EOF
access_log=$run/tollgate.access.log
: >"$access_log"
# start_gateway NAME: tollgate on a new port; sets gw_idx, gw_pid, gport
start_gateway() {
    start "$1" "$access_log" "$run/$1.err" "$bin" --config "$run/tollgate.yaml"
    gw_idx=$((${#pids[@]} - 1))
    gport=$(tollgate_port "$gw_idx" "$access_log")
    gw_pid=${pids[gw_idx]}
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$gport/health/ready" >/dev/null && break
        alive_or_die "$gw_idx"
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$gport/health/ready" >/dev/null || die "$1 not ready: $(tail -n 5 "$run/$1.err")"
}
start_gateway tollgate

admin() { curl -sf -H "Authorization: Bearer $master" -d "$2" "http://127.0.0.1:$gport/admin/$1"; }
jfield() { python3 -c 'import sys, json; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
org=$(admin organizations '{"name":"proof"}' | jfield id) || die "admin: organization"
team=$(admin teams "{\"org_id\":\"$org\",\"name\":\"proof\",\"max_budget\":\"1000000\",\"budget_duration\":\"1d\",\"rpm\":1000000000,\"tpm\":1000000000000}" | jfield id) || die "admin: team"
admin "teams/$team/credits" '{"kind":"topup","amount":"1000000"}' >/dev/null || die "admin: credits"
gw_key=$(admin keys "{\"team_id\":\"$team\",\"alias\":\"proof\",\"max_budget\":\"1000000\",\"rpm\":1000000000}" | jfield key) || die "admin: key"
# a key without any budget, credit limit or rate limit (d's no-budget rows): metered, no leases
plain_team=$(admin teams "{\"org_id\":\"$org\",\"name\":\"plain\",\"credit_limit\":null}" | jfield id) || die "admin: team"
plain_key=$(admin keys "{\"team_id\":\"$plain_team\",\"alias\":\"proof-plain\"}" | jfield key) || die "admin: key"

start_nginx "$uport"

# Portkey: its start-server.js (a Hono app on @hono/node-server) takes
# --port=N; loopback.mjs pins its listener to 127.0.0.1. The route comes
# from headers: provider openai, custom host = the upstream.
pk_idx="" pport=""
for _attempt in 1 2 3 4 5; do
    p=$(free_port) || continue
    start portkey "$run/portkey.out" "$run/portkey.err" env NODE_ENV=production \
        node --import "$pk_dir/loopback.mjs" "$pk_dir/node_modules/@portkey-ai/gateway/build/start-server.js" \
        --port="$p" --headless
    pk_idx=$((${#pids[@]} - 1))
    for _ in $(seq 150); do
        kill -0 "${pids[pk_idx]}" 2>/dev/null || break
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && { pport=$p; break; }
        sleep 0.1
    done
    [ -n "$pport" ] && break
    grep -q EADDRINUSE "$run/portkey.err" 2>/dev/null && continue
    keep_run=1
    tail -n 20 "$run/portkey.err" >&2
    die "Portkey did not start"
done
[ -n "$pport" ] || die "no port for Portkey after 5 attempts"
pk_pid=${pids[pk_idx]}
pk_headers="x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:$uport/v1"

check_all_alive() {
    local i
    for i in "$up_idx" "$gw_idx" "$nginx_idx" "$pk_idx"; do alive_or_die "$i"; done
}

# targets: index -> name, base URL, key, model, extra headers ("|"-separated)
t_names=(direct nginx tollgate portkey)
t_urls=("http://127.0.0.1:$uport" "http://127.0.0.1:$nport" "http://127.0.0.1:$gport" "http://127.0.0.1:$pport")
t_keys=("$up_key" "$up_key" "$gw_key" "$up_key")
t_models=("$up_model" "$up_model" "$gw_model" "$up_model")
t_headers=("" "" "" "$pk_headers")

# ---- 3. every target answers 200, plain and streaming ------------------------
for ti in 0 1 2 3; do
    check_target "${t_names[ti]}" "${t_urls[ti]}" "${t_keys[ti]}" "${t_models[ti]}" "${t_headers[ti]}"
done

# ---- 4. measuring -----------------------------------------------------------
declare -A res     # res[CELL,field]; CELL = "section/row/target"
failed=()
meter_notes=()
gw_calls=0         # call lines of tollgate's access log so far (for the ledger check)

# access_take: count tollgate's call lines so far, then truncate its log
access_take() {
    local n
    n=$(grep -c '"upstream_format":' "$access_log" || true)
    gw_calls=$((gw_calls + n))
    : >"$access_log"
}

pg_ms() { echo $(( $(proc_ms "$pm_pid") + $(children_of_ms "$pm_pid") )); }

# cpu_begin / cpu_end CELL TARGET: CPU of the proxy, the upstream and
# PostgreSQL during the cell, and of every process outside the benchmark
cpu_begin() {
    c_t0=$(date +%s%N)
    read -r c_b0 _ < <(machine_ms)
    c_x0=$(others_ms)
    c_u0=$(proc_ms "$up_pid")
    c_g0=$(proc_ms "$gw_pid")
    c_n0=$(proc_ms "${nginx_pids[@]}")
    c_p0=$(proc_ms "$pk_pid")
    c_pg0=$(pg_ms)
}
cpu_end() {
    local k=$1 tn=$2 t1 b1 x1 wall
    res[$k,up_ms]=$(( $(proc_ms "$up_pid") - c_u0 ))
    case $tn in
        nginx) res[$k,proxy_ms]=$(( $(proc_ms "${nginx_pids[@]}") - c_n0 )) ;;
        tollgate) res[$k,proxy_ms]=$(( $(proc_ms "$gw_pid") - c_g0 )) ;;
        portkey) res[$k,proxy_ms]=$(( $(proc_ms "$pk_pid") - c_p0 )) ;;
    esac
    res[$k,pg_ms]=$(( $(pg_ms) - c_pg0 ))
    x1=$(others_ms)
    read -r b1 _ < <(machine_ms)
    t1=$(date +%s%N)
    wall=$(( (t1 - c_t0) / 1000000 ))
    res[$k,other_pct]=$(awk -v x=$((x1 - c_x0)) -v w="$wall" -v n="$ncpu" \
        'BEGIN { v = x * 100 / (w * n); printf "%.0f", v < 0 ? 0 : v }')
    res[$k,busy_pct]=$(awk -v b=$((b1 - c_b0)) -v w="$wall" -v n="$ncpu" \
        'BEGIN { printf "%.0f", b * 100 / (w * n) }')
}

# meter_check CELL LABEL REQUESTS: tollgate's access log of the cell: every
# call line must be status 200 with completion_tokens 16 (or 499: cut off
# when the client stopped)
meter_check() {
    local k=$1 label=$2 n=$3 other untok
    meter_notes+=("$(awk -v label="$label" -v n="$n" '
        /"upstream_format":/ { c++ } /"upstream_format":.*"status":200,/ { ok++; if (/"completion_tokens":16,/) tok++ }
        /"upstream_format":.*"status":499,/ { cut++ }
        match($0, /"overhead_us":[0-9.]+/) { s += substr($0, RSTART + 14, RLENGTH - 14) }
        END { printf "%-26s client %d; log %d calls: %d status 200 (%d with completion_tokens 16), %d 499, %d other; mean overhead_us %.1f",
              label, n, c, ok, tok, cut, c - ok - cut, c ? s / c : 0 }' "$access_log")")
    other=$(grep '"upstream_format":' "$access_log" | grep -cvE '"status":(200|499),' || true)
    untok=$(grep '"upstream_format":.*"status":200,' "$access_log" | grep -cv '"completion_tokens":16,' || true)
    if [ "$other" != 0 ] || [ "$untok" != 0 ]; then
        res[$k,ok]=0
        failed+=("$label: tollgate access log: $other calls with a status other than 200/499, $untok status-200 calls without completion_tokens 16")
        cp "$access_log" "$run/access.$(echo "$label" | tr -c 'a-z0-9' _).log"
        keep_run=1
    fi
}

# wrk_run TARGET-INDEX CONNS DURATION OUTFILE
wrk_run() {
    local ti=$1 c=$2 d=$3 out=$4 t=$threads s
    [ "$t" -gt "$c" ] && t=$c
    s=$(secs_of "$d")
    BENCH_KEY=${t_keys[ti]} BENCH_MODEL=${t_models[ti]} BENCH_STREAM=0 BENCH_HEADERS=${t_headers[ti]} \
        timeout -k 5 $((s + 30)) \
        wrk -t"$t" -c"$c" -d"$d" --timeout 2s -s "$here/chat.lua" "${t_urls[ti]}/" >"$out" 2>&1
}

# measure_wrk SECTION ROW TARGET-INDEX CONNS: one wrk cell into res[SECTION/ROW/TARGET,*]
measure_wrk() {
    local sec=$1 row=$2 ti=$3 c=$4 tn=${t_names[$3]} st=0 f errs=""
    local k="$sec/$row/$tn" out="$run/wrk.$sec.$c.$tn.out"
    check_all_alive
    echo "$bench_name: $sec $row $tn: warm-up $warmup, measure $duration" >&2
    [ "$warm_s" -eq 0 ] || wrk_run "$ti" "$c" "$warmup" "$run/warm.out" || true
    access_take
    cpu_begin
    wrk_run "$ti" "$c" "$duration" "$out" || st=$?
    cpu_end "$k" "$tn"
    check_all_alive
    : >"$run/nginx/access.log"
    res[$k,ok]=0
    if ! grep -q '^BENCH ' "$out"; then
        failed+=("$k: wrk exit $st, no result line: $(tr '\n' ' ' <"$out" | head -c 300)")
        echo "$bench_name: FAILED $k" >&2
        access_take
        return 0
    fi
    for f in requests rps p50_us p99_us status_errors connect_errors read_errors write_errors timeouts; do
        res[$k,$f]=$(bench_get "$out" "$f")
    done
    res[$k,ok]=1
    for f in status_errors connect_errors read_errors write_errors timeouts; do
        [ "${res[$k,$f]}" = 0 ] || errs+=" $f=${res[$k,$f]}"
    done
    [ "${res[$k,requests]}" != 0 ] || errs+=" requests=0"
    if [ -n "$errs" ]; then
        res[$k,ok]=0
        failed+=("$k: wrk errors:$errs (of ${res[$k,requests]} requests)")
        echo "$bench_name: FAILED $k:$errs" >&2
    fi
    [ "$tn" != tollgate ] || meter_check "$k" "$sec $row" "${res[$k,requests]}"
    access_take
}

# sse_args TARGET-INDEX -> sse_load's -k -m -H ... URL (in the array sargs)
sse_args() {
    local ti=$1 h
    local -a hs
    sargs=(-k "${t_keys[ti]}" -m "${t_models[ti]}")
    IFS='|' read -ra hs <<<"${t_headers[ti]}"
    for h in "${hs[@]}"; do [ -z "$h" ] || sargs+=(-H "$h"); done
}

# measure_sse ROW TARGET-INDEX CONNS: sse_load in loop mode
measure_sse() {
    local row=$1 ti=$2 c=$3 tn=${t_names[$2]} st=0 f
    local k="c/$row/$tn" out="$run/sse.$c.$tn.out"
    check_all_alive
    sse_args "$ti"
    echo "$bench_name: c $row $tn: warm-up $warmup, measure $duration" >&2
    [ "$warm_s" -eq 0 ] || timeout -k 5 $((warm_s + 30)) "$sse_load" -c "$c" -d "$warm_s" "${sargs[@]}" \
        "${t_urls[ti]}/v1/chat/completions" >"$run/warm.out" 2>&1 || true
    access_take
    cpu_begin
    timeout -k 5 $((dur_s + 30)) "$sse_load" -c "$c" -d "$dur_s" "${sargs[@]}" \
        "${t_urls[ti]}/v1/chat/completions" >"$out" 2>"$out.err" || st=$?
    cpu_end "$k" "$tn"
    check_all_alive
    : >"$run/nginx/access.log"
    res[$k,ok]=0
    if ! grep -q '^SSELOOP ' "$out"; then
        failed+=("$k: sse_load exit $st, no result line: $(head -c 300 "$out.err")")
        access_take
        return 0
    fi
    for f in streams streams_per_s ttft_p50_us ttft_p99_us total_p50_us total_p99_us failed ttft_fallback; do
        res[$k,$f]=$(bench_get "$out" "$f" SSELOOP)
    done
    res[$k,ok]=1
    if [ "${res[$k,failed]}" != 0 ] || [ "${res[$k,streams]}" = 0 ]; then
        res[$k,ok]=0
        failed+=("$k: $(cut -d' ' -f2- "$out")")
    fi
    [ "$tn" != tollgate ] || meter_check "$k" "c $row" "${res[$k,streams]}"
    access_take
}

# restart_gateway NAME: stop tollgate (SIGTERM: it drains, returns its
# leases and ships the ledger) and start a fresh process on the same
# database, so that a row of d starts from a new process's RSS
restart_gateway() {
    local i
    access_take
    kill -TERM "$gw_pid"
    for i in $(seq 100); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    wait "$gw_pid" 2>/dev/null || true
    access_take
    start_gateway "$1"
    t_urls[2]="http://127.0.0.1:$gport"
    access_take
}

# measure_hold ROW MODEL STREAMS KEY: sse_load in hold mode through a fresh tollgate
measure_hold() {
    local row=$1 model=$2 n=$3 key=$4 st=0 f k="d/$1/tollgate" out="$run/hold.$1.out"
    restart_gateway "tollgate-$row"
    check_all_alive
    echo "$bench_name: d $row: $n streams of $hold_tokens tokens at 1 token/s through tollgate ($model)" >&2
    access_take
    cpu_begin
    timeout -k 5 $((hold_tokens + 120)) "$sse_load" -M -c "$n" -r "$hold_rate" -t "$hold_tokens" \
        -s "$stall_ms" -T $((hold_tokens + 90)) -p "$gw_pid" -k "$key" -m "$model" \
        "http://127.0.0.1:$gport/v1/chat/completions" >"$out" 2>"$out.err" || st=$?
    cpu_end "$k" tollgate
    check_all_alive
    # what the process keeps once every stream is closed
    sleep 3
    res[$k,rss_after_kb]=$(awk '/^VmRSS:/ { print $2 }' "/proc/$gw_pid/status")
    res[$k,ok]=0
    res[$k,n]=$n
    if ! grep -q '^SSEHOLD ' "$out"; then
        failed+=("$k: sse_load exit $st, no result line: $(tail -c 300 "$out.err")")
        access_take
        return 0
    fi
    for f in open_peak all_open_s held_s completed failed unfinished stalled max_gap_ms gap_p99_ms \
        rss_before_kb rss_all_open_kb rss_peak_kb hwm_kb ttft_p99_us; do
        res[$k,$f]=$(bench_get "$out" "$f" SSEHOLD)
    done
    res[$k,ok]=1
    if [ "${res[$k,failed]}" != 0 ] || [ "${res[$k,unfinished]}" != 0 ] || [ "${res[$k,open_peak]}" != "$n" ]; then
        res[$k,ok]=0
        failed+=("$k: $(cut -d' ' -f2- "$out")")
    fi
    if [ "${res[$k,stalled]}" != 0 ]; then
        res[$k,ok]=0
        failed+=("$k: ${res[$k,stalled]} streams stalled (a gap over $stall_ms ms; longest ${res[$k,max_gap_ms]} ms)")
    fi
    # the calls were metered: one call line per stream, status 200, with the
    # tokens the client asked for
    local lines ok200
    lines=$(grep -c '"upstream_format":' "$access_log" || true)
    ok200=$(grep '"upstream_format":.*"status":200,' "$access_log" | grep -c "\"completion_tokens\":$hold_tokens," || true)
    meter_notes+=("$(printf '%-26s client %d; log %d calls, %d status 200 with completion_tokens %d' "d $row" "${res[$k,completed]}" "$lines" "$ok200" "$hold_tokens")")
    if [ "$ok200" != "$n" ]; then
        res[$k,ok]=0
        failed+=("$k: access log has $ok200 metered status-200 calls for $n streams")
        cp "$access_log" "$run/access.hold.$row.log"
        keep_run=1
    fi
    access_take
}

if has a; then
    echo "$bench_name: a. core rows ($conns_list connections)" >&2
    for c in $conns_list; do
        for ti in 0 1 2; do measure_wrk a "c=$c" "$ti" "$c"; done
    done
fi
if has b; then
    echo "$bench_name: b. Portkey ($pk_conns_list connections)" >&2
    for c in $pk_conns_list; do
        measure_wrk b "c=$c" 3 "$c"
        # tollgate at the same load right after, unless the core rows have it
        if ! has a || [[ " $conns_list " != *" $c "* ]]; then measure_wrk b "c=$c" 2 "$c"; fi
    done
fi
if has c; then
    echo "$bench_name: c. streaming ($stream_conns connections)" >&2
    for ti in 0 1 2 3; do measure_sse "c=$stream_conns" "$ti" "$stream_conns"; done
fi

# d: through the upstream as far as the descriptor limit allows (tollgate
# holds two sockets per stream), with the budgeted key and with a key
# without budgets; if that is fewer than PROOF_STREAMS, all of them again
# with the mock inside tollgate (one socket per stream)
fd_room=$(( (nofile - 100) / 2 ))
up_streams=$streams
[ "$up_streams" -le "$fd_room" ] || up_streams=$fd_room
hold_rows=("budgets:bench-slow:$up_streams:$gw_key" "no-budget:bench-slow:$up_streams:$plain_key")
[ "$up_streams" = "$streams" ] || hold_rows+=("in-process:bench-local-slow:$streams:$plain_key")
if has d; then
    echo "$bench_name: d. held streams (RLIMIT_NOFILE $nofile)" >&2
    for hr in "${hold_rows[@]}"; do
        IFS=: read -r hrow hmodel hn hkey <<<"$hr"
        measure_hold "$hrow" "$hmodel" "$hn" "$hkey"
    done
fi

# the ledger: every call tollgate logged is a row in PostgreSQL
access_take
ledger_rows=0
for _ in $(seq 50); do
    ledger_rows=$(psql -X -A -t -d "$conninfo" -c "SELECT count(*) FROM calls") || ledger_rows=-1
    [ "$ledger_rows" = "$gw_calls" ] && break
    sleep 0.2
done
if [ "$ledger_rows" != "$gw_calls" ]; then
    failed+=("ledger: $ledger_rows rows in PostgreSQL's calls table for $gw_calls calls in tollgate's access log")
fi
# where PostgreSQL's share went: its statements by total execution time
if [ "${PROOF_PG_STATS:-0}" = 1 ]; then
    psql -X -q -d "$conninfo" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" \
        -c "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms,
        round((total_exec_time / greatest(calls, 1) * 1000)::numeric, 1) AS us_per_call, rows,
        left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
        FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12" >"$run/pg_stat_statements.txt" 2>&1 || true
    echo "$bench_name: PostgreSQL statements by total time:" >&2
    cat "$run/pg_stat_statements.txt" >&2
fi

if has e; then
    echo "$bench_name: e. tokenizer (${tok_seconds}s per cell and tool)" >&2
    tok_st=0
    TOLLGATE_BIN=$bin BENCH_SECONDS=$tok_seconds BENCH_JSON=$run/tokenizer.json \
        timeout 600 node "$here/tokenizer_bench.mjs" >"$run/tokenizer.out" 2>&1 || tok_st=$?
    if [ ! -s "$run/tokenizer.json" ]; then
        failed+=("e: tokenizer_bench.mjs exit $tok_st: $(tail -c 300 "$run/tokenizer.out")")
    elif [ "$tok_st" != 0 ]; then
        failed+=("e: tokenizer_bench.mjs exit $tok_st: $(grep MISMATCH "$run/tokenizer.out" | head -n 3 | tr '\n' ' ')")
    fi
fi

# ---- 5. the table -------------------------------------------------------------
ts=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$here/results"
result="$here/results/proof-$ts.txt"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else printf "-" }'; }
per_req() { # CELL FIELD -> CPU us per request (or per stream)
    local k=$1 n=${res[$1,requests]:-${res[$1,streams]:-0}}
    if [ -n "${res[$k,$2]:-}" ] && [ "$n" -gt 0 ]; then
        awk -v ms="${res[$k,$2]}" -v n="$n" 'BEGIN { printf "%.1f", ms * 1000 / n }'
    else
        printf -- "-"
    fi
}
mark() { [ "${res[$1,ok]:-0}" = 1 ] || printf '!'; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }

{
    rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=""
    if git -C "$root" --no-optional-locks status --porcelain 2>/dev/null | grep -q .; then
        dirty=" (working tree modified)"
    fi
    cpu_model=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
    echo "tollgate proof benchmark  $started  tollgate $rev$dirty  (PROOF_QUICK=$quick)"
    echo "host: $(nproc) CPUs ($cpu_model), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r); load before: $loadavg"
    echo "tools: wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}') -t$threads, nginx $(nginx -v 2>&1 | sed 's|.*/||'), PostgreSQL $pg_version, node $(node --version),"
    echo "       Portkey @portkey-ai/gateway $pk_version (@hono/node-server $hono_version), RLIMIT_NOFILE $nofile"
    echo "CAVEAT: the load generator, nginx/Portkey, the upstream, tollgate and PostgreSQL share these $(nproc) CPUs"
    echo "        (no pinning); absolute numbers are a property of this box, the ratios are what to compare."
    echo "upstream: tollgate, built-in mock in the OpenAI format (16 tokens, no delay), 1 worker, access log off"
    echo "tollgate: 1 worker, database key (team + key budgets leased, prepaid credits, rpm/tpm), metering,"
    echo "          JSON access log to a file, ledger spooled and shipped to PostgreSQL (same box)"
    echo "each cell: $duration after $([ "$warm_s" -eq 0 ] && echo "no warm-up" || echo "a $warmup warm-up"); latency in microseconds; '!' = that cell had errors (see FAILED)"
    echo "other% = CPU of processes outside the benchmark during the cell, in % of all CPUs (above a few %: disturbed)"
    echo
    if has a; then
        echo "a. core: POST /v1/chat/completions (not streamed), keep-alive, wrk"
        printf '%-7s %-9s %9s %7s %7s %8s %10s %8s %7s %6s\n' \
            conns target RPS p50us p99us "x nginx" "+p99 vs d" "proxy us" "pg us" other%
        for c in $conns_list; do
            for tn in direct nginx tollgate; do
                k="a/c=$c/$tn"
                added="-"
                if [ "$tn" != direct ] && [ -n "${res[$k,p99_us]:-}" ] && [ -n "${res[a/c=$c/direct,p99_us]:-}" ]; then
                    added=$(printf '%+d' $(( res[$k,p99_us] - res[a/c=$c/direct,p99_us] )))
                fi
                pgc="-"
                [ "$tn" != tollgate ] || pgc=$(per_req "$k" pg_ms)
                printf '%-7s %-9s %9s %7s %7s %8s %10s %8s %7s %6s\n' "$c" "$tn$(mark "$k")" \
                    "$(printf '%.0f' "${res[$k,rps]:-0}")" "${res[$k,p50_us]:--}" "${res[$k,p99_us]:--}" \
                    "$(ratio "${res[$k,rps]:-}" "${res[a/c=$c/nginx,rps]:-0}")" "$added" \
                    "$( [ "$tn" = direct ] && echo - || per_req "$k" proxy_ms)" "$pgc" "${res[$k,other_pct]:--}"
            done
        done
        echo "(proxy us / pg us: CPU time of the proxy process / of PostgreSQL per request)"
        echo
    fi
    if has b; then
        echo "b. Portkey AI gateway over the same upstream (no key auth, metering or ledger: it forwards the"
        echo "   upstream key), same wrk load"
        printf '%-7s %-9s %9s %7s %7s %14s %8s %6s\n' conns target RPS p50us p99us "tollgate/this" "proxy us" other%
        for c in $pk_conns_list; do
            k="b/c=$c/portkey"
            tk="a/c=$c/tollgate"
            [ -n "${res[$tk,rps]:-}" ] || tk="b/c=$c/tollgate"
            for kk in "$k" "$tk"; do
                tn=${kk##*/}
                printf '%-7s %-9s %9s %7s %7s %14s %8s %6s\n' "$c" "$tn$(mark "$kk")" \
                    "$(printf '%.0f' "${res[$kk,rps]:-0}")" "${res[$kk,p50_us]:--}" "${res[$kk,p99_us]:--}" \
                    "$( [ "$tn" = portkey ] && ratio "${res[$tk,rps]:-}" "${res[$k,rps]:-0}" || echo -)" \
                    "$(per_req "$kk" proxy_ms)" "${res[$kk,other_pct]:--}"
            done
        done
        echo
    fi
    if has c; then
        echo "c. streaming: \"stream\": true (18 events + [DONE] per answer), $stream_conns keep-alive connections,"
        echo "   sse_load; TTFT = request written -> first non-empty content delta; end = -> end of the stream"
        printf '%-9s %10s %9s %9s %9s %9s %8s %8s %6s\n' target streams/s "TTFT p50" "TTFT p99" "end p50" "end p99" "x nginx" "proxy us" other%
        for tn in direct nginx tollgate portkey; do
            k="c/c=$stream_conns/$tn"
            printf '%-9s %10s %9s %9s %9s %9s %8s %8s %6s\n' "$tn$(mark "$k")" "${res[$k,streams_per_s]:--}" \
                "${res[$k,ttft_p50_us]:--}" "${res[$k,ttft_p99_us]:--}" "${res[$k,total_p50_us]:--}" \
                "${res[$k,total_p99_us]:--}" "$(ratio "${res[$k,streams_per_s]:-}" "${res[c/c=$stream_conns/nginx,streams_per_s]:-0}")" \
                "$( [ "$tn" = direct ] && echo - || per_req "$k" proxy_ms)" "${res[$k,other_pct]:--}"
        done
        echo
    fi
    if has d; then
        echo "d. concurrent SSE streams held through tollgate: $hold_tokens tokens at 1 token/s each, opened at"
        echo "   $hold_rate/s, each row on a freshly started tollgate; RSS = its VmRSS (sampled every 200 ms): idle before,"
        echo "   peak, (peak - idle) per stream, and 3 s after the last stream closed; stall = a gap > $stall_ms ms between"
        echo "   two reads of a stream; peak = streams open at once; held s = all of them open at once for that long"
        printf '%-11s %7s %7s %7s %9s %6s %7s %7s %9s %9s %9s %8s %9s\n' row streams "peak" "held s" completed failed stalled "max gap" "RSS idle" "RSS peak" "KiB/strm" "RSS end" "ttft p99"
        for hr in "${hold_rows[@]}"; do
            IFS=: read -r hrow _ hn _ <<<"$hr"
            k="d/$hrow/tollgate"
            per="-"
            [ -z "${res[$k,rss_peak_kb]:-}" ] ||
                per=$(awk -v a="${res[$k,rss_peak_kb]}" -v b="${res[$k,rss_before_kb]}" -v n="$hn" 'BEGIN { printf "%.1f", (a - b) / n }')
            printf '%-11s %7s %7s %7s %9s %6s %7s %7s %9s %9s %9s %8s %9s\n' "$hrow$(mark "$k")" "$hn" \
                "${res[$k,open_peak]:--}" "${res[$k,held_s]:--}" "${res[$k,completed]:--}" "${res[$k,failed]:--}" \
                "${res[$k,stalled]:--}" "${res[$k,max_gap_ms]:--}ms" \
                "$(mb "${res[$k,rss_before_kb]:-0}")MB" "$(mb "${res[$k,rss_peak_kb]:-0}")MB" "$per" \
                "$(mb "${res[$k,rss_after_kb]:-0}")MB" "$(awk -v u="${res[$k,ttft_p99_us]:-0}" 'BEGIN { printf "%.2fs", u / 1e6 }')"
        done
        echo "   budgets: the key of a-c (team and key budgets and prepaid credits, leased); no-budget: a database key"
        echo "   of a team without budgets or limits (metered, no leases); both through the upstream (mock, paced)"
        if [ "$up_streams" != "$streams" ]; then
            echo "   RLIMIT_NOFILE is $nofile and cannot be raised here: tollgate holds two sockets per stream through the"
            echo "   upstream, so those rows have $up_streams; in-process serves all $streams from tollgate's own mock (no-budget key)"
        fi
        echo
    fi
    if has e; then
        echo "e. tokenizer: tollgate tokenize --bench against npm tiktoken (WASM) encode_ordinary, same text, one thread"
        if [ -s "$run/tokenizer.json" ]; then
            python3 - "$run/tokenizer.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"   tiktoken {d['tiktoken']} on node {d['node']}, {d['seconds']} s per cell and tool")
print(f"{'encoding':<12} {'input':<9} {'bytes':>7} {'tokens':>7} {'tiktoken MB/s':>14} {'tollgate MB/s':>14} {'ratio':>7}")
for r in d['rows']:
    print(f"{r['encoding']:<12} {r['input']:<9} {r['bytes']:>7} {r['tokens']:>7} {r['tiktoken_mbps']:>14.2f} {r['tollgate_mbps']:>14.2f} {r['tollgate_mbps'] / r['tiktoken_mbps']:>6.2f}x")
print("   token counts: " + ("MISMATCH " + "; ".join(d['problems']) if d['problems'] else "equal for every cell"))
PY
        else
            echo "   not measured"
        fi
        echo
    fi
    # disturbed CELL...: a warning when processes outside the benchmark used
    # more than 5 % of the CPUs during one of the compared cells
    disturbed() {
        local k m=0 v
        for k in "$@"; do
            v=${res[$k,other_pct]:-0}
            [ "$v" -le "$m" ] || m=$v
        done
        [ "$m" -le 5 ] || printf ' -- INCONCLUSIVE: other processes used up to %s%% of the CPUs; rerun on a quiet box' "$m"
    }
    echo "targets:"
    worst="" worst_c=""
    line=""
    for c in $conns_list; do
        r=$(ratio "${res[a/c=$c/tollgate,rps]:-}" "${res[a/c=$c/nginx,rps]:-0}")
        line+=" c=$c ${r}x"
        if [ "$r" != - ] && { [ -z "$worst" ] || awk -v a="$r" -v b="$worst" 'BEGIN { exit !(a < b) }'; }; then
            worst=$r worst_c=$c
        fi
    done
    if [ -n "$worst" ]; then
        v=$(awk -v r="$worst" 'BEGIN { print (r >= 0.9) ? "MET" : "NOT MET" }')
        cells=()
        for c in $conns_list; do cells+=("a/c=$c/nginx" "a/c=$c/tollgate"); done
        echo "  tollgate >= 0.9x nginx RPS, every connection count:$line -> $v (lowest ${worst}x at c=$worst_c)$(disturbed "${cells[@]}")"
    else
        echo "  tollgate >= 0.9x nginx RPS: NOT MEASURED"
    fi
    if [ -n "${res[a/c=1/tollgate,p99_us]:-}" ] && [ -n "${res[a/c=1/direct,p99_us]:-}" ]; then
        a=$(( res[a/c=1/tollgate,p99_us] - res[a/c=1/direct,p99_us] ))
        echo "  added p99 at 1 connection <= 50 us (tollgate p99 - direct p99): ${a} us -> $([ "$a" -le 50 ] && echo MET || echo "NOT MET")$(disturbed a/c=1/direct a/c=1/tollgate)"
    else
        echo "  added p99 at 1 connection <= 50 us: NOT MEASURED (needs the c=1 row)"
    fi
    # the RSS target: the no-budget row through the upstream (scaled to
    # PROOF_STREAMS when the descriptor limit cut it short) and the
    # in-process row, if any; the larger of the two counts. (The budgets
    # row's streams are not all admitted when leases fall behind.)
    ku=d/no-budget/tollgate ki=d/in-process/tollgate
    if [ -n "${res[$ku,rss_peak_kb]:-}" ] && [ "$streams" -ge 10000 ]; then
        up_mb=$(awk -v a="${res[$ku,rss_peak_kb]}" -v b="${res[$ku,rss_before_kb]}" -v n="$up_streams" -v m="$streams" \
            'BEGIN { printf "%.1f", (b + (a - b) * m / n) / 1024 }')
        worst_mb=$up_mb
        what="no-budget through the upstream: peak $(mb "${res[$ku,rss_peak_kb]}") MB with $up_streams streams"
        [ "$up_streams" = "$streams" ] || what+=", ${up_mb} MB scaled to $streams"
        if [ -n "${res[$ki,rss_peak_kb]:-}" ]; then
            in_mb=$(mb "${res[$ki,rss_peak_kb]}")
            what+="; in-process mock: peak ${in_mb} MB with $streams streams"
            worst_mb=$(awk -v a="$up_mb" -v b="$in_mb" 'BEGIN { print (a > b) ? a : b }')
        fi
        v=$(awk -v p="$worst_mb" 'BEGIN { print (p < 256) ? "MET" : "NOT MET" }')
        [ "${res[$ku,ok]}${res[$ki,ok]:-1}" = 11 ] || v="$v (but a row of d had errors)"
        echo "  $streams streams held in < 256 MB RSS: $what -> $v"
        kb=d/budgets/tollgate
        [ -z "${res[$kb,completed]:-}" ] ||
            echo "    with budgets (leases): ${res[$kb,completed]} of $up_streams streams served, ${res[$kb,failed]} refused or failed, peak $(mb "${res[$kb,rss_peak_kb]}") MB"
    else
        echo "  10000 streams held in < 256 MB RSS: NOT MEASURED (PROOF_STREAMS=$streams)"
    fi
    c=${pk_conns_list%% *}
    tk="a/c=$c/tollgate"
    [ -n "${res[$tk,rps]:-}" ] || tk="b/c=$c/tollgate"
    r=$(ratio "${res[$tk,rps]:-}" "${res[b/c=$c/portkey,rps]:-0}")
    if [ "$r" != - ]; then
        echo "  tollgate >= 50x Portkey RPS at c=$c: ${r}x -> $(awk -v r="$r" 'BEGIN { print (r >= 50) ? "MET" : "NOT MET" }')$(disturbed "$tk" "b/c=$c/portkey")"
    else
        echo "  tollgate >= 50x Portkey RPS: NOT MEASURED"
    fi
    echo
    echo "metering and ledger cross-checks (tollgate's access log per cell; 499 = cut off when the client stopped):"
    for n in "${meter_notes[@]}"; do echo "  $n"; done
    echo "  ledger: $ledger_rows rows in PostgreSQL (calls) for $gw_calls calls in the access log"
    if [ ${#failed[@]} -gt 0 ]; then
        echo
        echo "FAILED:"
        for f in "${failed[@]}"; do echo "  $f"; done
    fi
} | tee "$result"
echo "$bench_name: written to $result" >&2
if [ ${#failed[@]} -gt 0 ]; then
    keep_run=1
    exit 1
fi
