#!/usr/bin/env bash
# tollgate proxy benchmark: the same mock upstream measured with wrk
#   (a) directly,
#   (b) through nginx proxy_pass with upstream keep-alive,
#   (c) through tollgate (key auth, usage metering, access log on).
# The upstream is a second tollgate process with a `type: mock` provider.
# Prints a table and writes it to test/bench/results/<timestamp>.txt.
#
# Run as root on Debian bookworm:   bash test/bench/run.sh
# Environment (all optional):
#   BENCH_DURATION      measured time per row and target, wrk syntax (10s)
#   BENCH_WARMUP        warm-up before each measurement, 0 = none (2s)
#   BENCH_ROUNDS        measure every cell this many times, report the median (1)
#   BENCH_THREADS       wrk threads, capped at the connection count (1)
#   BENCH_CONNECTIONS   non-stream rows, connection counts ("1 16 64 256")
#   BENCH_STREAM_CONNECTIONS  connections of the streaming row (16)
#   BENCH_SKIP_SETUP=1  skip install-deps.sh and the build; use BENCH_BIN
#   BENCH_BIN           tollgate binary (build-bench/tollgate)
# See test/bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/test/bench

duration=${BENCH_DURATION:-10s}
warmup=${BENCH_WARMUP:-2s}
threads=${BENCH_THREADS:-1}
rounds=${BENCH_ROUNDS:-1}
conns_list=${BENCH_CONNECTIONS:-"1 16 64 256"}
stream_conns=${BENCH_STREAM_CONNECTIONS:-16}
bin=${BENCH_BIN:-$root/build-bench/tollgate}

bench_name=bench
. "$here/lib.sh"   # die, secs_of, start, the exit trap, nginx, CPU accounting

dur_s=$(secs_of "$duration") || die "BENCH_DURATION: not a duration: $duration"
warm_s=$(secs_of "$warmup") || die "BENCH_WARMUP: not a duration: $warmup"
[ "$dur_s" -ge 1 ] || die "BENCH_DURATION must be at least 1s"
if [ "$warm_s" -gt 600 ] || [ "$dur_s" -gt 3600 ]; then die "BENCH_WARMUP/BENCH_DURATION: too long"; fi
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "BENCH_THREADS: not a positive number: $threads"
[[ $rounds =~ ^[1-9]$ ]] || die "BENCH_ROUNDS: 1..9: $rounds"
for c in $conns_list $stream_conns; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "connection count not a positive number: $c"
done

# ---- 1. tools and a Release binary -----------------------------------------
if [ "${BENCH_SKIP_SETUP:-0}" != 1 ]; then
    bash cmake/install-deps.sh bench
    cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=OFF >/dev/null
    cmake --build "$root/build-bench" -j2 >/dev/null
fi
for t in wrk nginx curl timeout; do
    command -v "$t" >/dev/null || die "$t not found (run without BENCH_SKIP_SETUP=1)"
done
[ -x "$bin" ] || die "no tollgate binary at $bin"

# ---- process bookkeeping: everything started here is stopped on exit -------
bench_init tollgate-bench   # $run; lib.sh stops every `start`ed process on exit

# ---- 2. the three targets --------------------------------------------------
up_key="tg-bench-upstream-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
gw_key="tg-bench-gateway-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
up_model=mock-1
gw_model=bench-model

# The upstream: tollgate answering with its built-in mock. No access log (it
# is the same for all three targets); info level for the "listening" line.
cat >"$run/upstream.yaml" <<EOF
listen: "127.0.0.1:0"
workers: 1
log: {level: info, access: false}
timeouts: {drain: 2s}
ledger: {spool_dir: "$run/upstream-spool"}
providers:
  - name: mock
    type: mock
    mock: {latency: 0ms, default_tokens: 16}
models:
  - name: $up_model
    provider: mock
keys:
  - key: $up_key
    alias: bench-upstream
EOF
start upstream "$run/upstream.out" "$run/upstream.err" "$bin" --config "$run/upstream.yaml"
up_idx=$((${#pids[@]} - 1))
uport=$(tollgate_port "$up_idx" "$run/upstream.out")

# (c) tollgate: its own virtual key; the alias maps to the upstream's model,
# so the model name is spliced into every forwarded body; usage is read
# from every answer and written to the JSON access log (stdout -> file).
cat >"$run/tollgate.yaml" <<EOF
listen: "127.0.0.1:0"
workers: 1
log: {level: info, access: true}
timeouts: {drain: 2s}
ledger: {spool_dir: "$run/tollgate-spool"}   # each instance needs its own (locked)
providers:
  - name: bench-up
    type: openai_compatible
    base_url: http://127.0.0.1:$uport/v1
    api_key: $up_key
models:
  - name: $gw_model
    provider: bench-up
    model: $up_model
keys:
  - key: $gw_key
    alias: bench
EOF
access_log=$run/tollgate.access.log
: >"$access_log"
start tollgate "$access_log" "$run/tollgate.err" "$bin" --config "$run/tollgate.yaml"
gw_idx=$((${#pids[@]} - 1))
gport=$(tollgate_port "$gw_idx" "$access_log")

# (b) nginx on a free port (retried if another process takes it first)
start_nginx "$uport"

target_names=(direct nginx tollgate)
target_urls=("http://127.0.0.1:$uport" "http://127.0.0.1:$nport" "http://127.0.0.1:$gport")
target_keys=("$up_key" "$up_key" "$gw_key")
target_models=("$up_model" "$up_model" "$gw_model")

check_all_alive() {
    alive_or_die "$up_idx"
    alive_or_die "$gw_idx"
    alive_or_die "$nginx_idx"
}

# ---- 3. each target answers 200, plain and streaming ------------------------
for ti in 0 1 2; do
    check_target "${target_names[ti]}" "${target_urls[ti]}" "${target_keys[ti]}" "${target_models[ti]}"
done
: >"$access_log"   # the curl checks are not part of any row

# ---- 4. measure -------------------------------------------------------------
# wrk_run TARGET-INDEX CONNS STREAM DURATION OUTFILE
wrk_run() {
    local ti=$1 c=$2 stream=$3 d=$4 out=$5 t=$threads s
    [ "$t" -gt "$c" ] && t=$c
    s=$(secs_of "$d")
    BENCH_KEY=${target_keys[ti]} BENCH_MODEL=${target_models[ti]} BENCH_STREAM=$stream \
        timeout -k 5 $((s + 30)) \
        wrk -t"$t" -c"$c" -d"$d" --timeout 2s -s "$here/chat.lua" "${target_urls[ti]}/" \
        >"$out" 2>&1
}

# CPU accounting: proc_ms, machine_ms, children_ms, others_ms (lib.sh)

rows=()
for c in $conns_list; do rows+=("$c:0"); done
rows+=("$stream_conns:1")

declare -A res     # res[row,target,round,field]; round "m" = the median round
failed=()
access_notes=()
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench: ${#rows[@]} rows x 3 targets x $rounds round(s) x ($warmup warm-up + $duration); logs in $run" >&2

# measure ROW TARGET-INDEX CONNS STREAM ROUND: one cell, into res[ROW,TARGET,ROUND,*]
measure() {
    local row=$1 ti=$2 c=$3 stream=$4 round=$5
    local tn=${target_names[ti]} st=0 f errs="" t0 t1 m_busy0 m_steal0 m_busy1 m_steal1
    local w0 w1 x0 x1 u0 u1 g0 g1 n0 n1 wall_ms ours other untok
    local k="$row,$tn,$round" out="$run/wrk.$c.$stream.$tn.$round.out"
    check_all_alive
    echo "bench: $row $tn (round $round): warm-up $warmup, measure $duration" >&2
    [ "$warm_s" -eq 0 ] || wrk_run "$ti" "$c" "$stream" "$warmup" "$run/warm.out" || true
    : >"$access_log"
    t0=$(date +%s%N)
    read -r m_busy0 m_steal0 < <(machine_ms)
    w0=$(children_ms)
    x0=$(others_ms)
    u0=$(proc_ms "${pids[up_idx]}")
    g0=$(proc_ms "${pids[gw_idx]}")
    n0=$(proc_ms "${nginx_pids[@]}")
    wrk_run "$ti" "$c" "$stream" "$duration" "$out" || st=$?
    u1=$(proc_ms "${pids[up_idx]}")
    g1=$(proc_ms "${pids[gw_idx]}")
    n1=$(proc_ms "${nginx_pids[@]}")
    w1=$(children_ms)
    x1=$(others_ms)
    read -r m_busy1 m_steal1 < <(machine_ms)
    t1=$(date +%s%N)
    check_all_alive
    : >"$run/nginx/access.log"   # nginx appends (O_APPEND): keeps the file small
    wall_ms=$(((t1 - t0) / 1000000))
    res[$k,up_ms]=$((u1 - u0))
    case $tn in
        nginx) res[$k,proxy_ms]=$((n1 - n0)) ;;
        tollgate) res[$k,proxy_ms]=$((g1 - g0)) ;;
    esac
    ours=$((u1 - u0 + g1 - g0 + n1 - n0 + w1 - w0))
    res[$k,other_pct]=$(awk -v b=$((m_busy1 - m_busy0)) -v o="$ours" -v w="$wall_ms" -v n="$ncpu" \
        'BEGIN { v = (b - o) * 100 / (w * n); printf "%.0f", v < 0 ? 0 : v }')
    res[$k,foreign_pct]=$(awk -v x=$((x1 - x0)) -v w="$wall_ms" -v n="$ncpu" \
        'BEGIN { v = x * 100 / (w * n); printf "%.0f", v < 0 ? 0 : v }')
    res[$k,steal_pct]=$(awk -v s=$((m_steal1 - m_steal0)) -v w="$wall_ms" -v n="$ncpu" \
        'BEGIN { printf "%.0f", s * 100 / (w * n) }')
    res[$k,ok]=0
    if ! grep -q '^BENCH ' "$out"; then
        failed+=("$row $tn (round $round): wrk exit $st, no result line: $(tr '\n' ' ' <"$out" | head -c 300)")
        echo "bench: FAILED $row $tn: wrk exit $st, no result line" >&2
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
        failed+=("$row $tn (round $round): FAILED:$errs (of ${res[$k,requests]} requests)")
        echo "bench: FAILED $row $tn:$errs" >&2
    fi
    [ "$tn" = tollgate ] || return 0
    # metering cross-check: the access log of this cell (the measurement plus
    # requests cut off when wrk stopped)
    access_notes+=("$(awk -v row="$row" -v round="$round" -v wrk_n="${res[$k,requests]}" '
        /^\{/ { n++ }
        /"status":200,/ { ok++; if (/"completion_tokens":16,/) tok++ }
        /"status":499,/ { cut++ }
        match($0, /"overhead_us":[0-9.]+/) { s += substr($0, RSTART + 14, RLENGTH - 14) }
        END {
            printf "%-12s r%s wrk %d; log %d: %d status 200 (%d with completion_tokens 16), %d 499, %d other; mean overhead_us %.1f",
                row, round, wrk_n, n, ok, tok, cut, n - ok - cut, n ? s / n : 0
        }' "$access_log")")
    # JSON lines only: with log.file: stdout the operational log is in the file too
    other=$(grep '^{' "$access_log" | grep -cvE '"status":(200|499),' || true)
    untok=$(grep '"status":200,' "$access_log" | grep -cv '"completion_tokens":16,' || true)
    if [ "$other" != 0 ] || [ "$untok" != 0 ]; then
        res[$k,ok]=0
        failed+=("$row tollgate (round $round): access log has $other lines with a status other than 200/499 and $untok status-200 lines without completion_tokens 16 (logs kept)")
        cp "$access_log" "$run/tollgate.access.$c.$stream.$round.log"
        keep_run=1
    fi
    : >"$access_log"
}

for r in "${rows[@]}"; do
    c=${r%%:*}
    stream=${r##*:}
    row="c=$c"
    [ "$stream" = 1 ] && row="stream c=$c"
    for ((round = 1; round <= rounds; round++)); do
        # rotate the order so that no target always runs first
        for j in 0 1 2; do
            measure "$row" $(((j + round - 1) % 3)) "$c" "$stream" "$round"
        done
    done
    # per target, the round with the median RPS stands for the cell (a
    # round that failed counts as RPS 0, and any failure marks the cell)
    for tn in "${target_names[@]}"; do
        pick=$(for ((round = 1; round <= rounds; round++)); do
                   echo "${res[$row,$tn,$round,rps]:-0} $round"
               done | sort -g | awk '{ a[NR] = $2 } END { print a[int((NR + 1) / 2)] }')
        allok=1
        for ((round = 1; round <= rounds; round++)); do
            [ "${res[$row,$tn,$round,ok]}" = 1 ] || allok=0
        done
        for f in requests rps p50_us p99_us up_ms proxy_ms other_pct foreign_pct steal_pct; do
            [ -z "${res[$row,$tn,$pick,$f]:-}" ] || res[$row,$tn,$f]=${res[$row,$tn,$pick,$f]}
        done
        res[$row,$tn,ok]=$allok
        res[$row,$tn,all_rps]=$(for ((round = 1; round <= rounds; round++)); do
                                    printf '%.0f ' "${res[$row,$tn,$round,rps]:-0}"
                                done)
    done
done

# ---- 5. the table -------------------------------------------------------------
ts=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$here/results"
result="$here/results/$ts.txt"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
cell() { # row target -> "RPS p50 p99"
    local k="$1,$2"
    if [ -z "${res[$k,rps]:-}" ]; then printf '%9s %7s %7s' "-" "-" "-"; return; fi
    printf '%9.0f %7s %7s' "${res[$k,rps]}" "${res[$k,p50_us]}" "${res[$k,p99_us]}"
    [ "${res[$k,ok]}" = 1 ] || printf '!'
}

{
    rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=""   # --no-optional-locks: status must not write the index
    if git -C "$root" --no-optional-locks status --porcelain 2>/dev/null | grep -q .; then
        dirty=" (working tree modified)"
    fi
    echo "tollgate proxy benchmark  $started  tollgate $rev$dirty"
    echo "host: $(nproc) CPUs, $(uname -r); wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}') -t$threads (capped at c), nginx $(nginx -v 2>&1 | sed 's|.*/||')"
    echo "CAVEAT: wrk, nginx, the upstream and tollgate all share these $(nproc) CPUs (no pinning;"
    echo "        load average before the run: $loadavg);"
    echo "        absolute numbers are a property of this box, the ratios are what to compare."
    echo "upstream: tollgate, type mock (latency 0, default_tokens 16), 1 worker, access log off"
    echo "(a) direct: wrk -> upstream"
    echo "(b) nginx: wrk -> nginx (1 worker, proxy_pass, upstream keepalive 64, HTTP/1.1, proxy_buffering off, access log to a file) -> upstream"
    echo "(c) tollgate: wrk -> tollgate (1 worker, key auth, model alias, usage metering, JSON access log to a file) -> upstream"
    wu="a $warmup warm-up"
    [ "$warm_s" -ne 0 ] || wu="no warm-up"
    if [ "$rounds" = 1 ]; then
        echo "each cell: $duration after $wu; keep-alive; RPS, p50/p99 latency in microseconds"
    else
        echo "each cell: the median-RPS round of $rounds (targets interleaved), each $duration after"
        echo "$wu; keep-alive; RPS, p50/p99 latency in microseconds from that round"
    fi
    echo
    printf '%-12s | %-25s | %-25s | %-25s | %8s %8s\n' "" "direct" "nginx" "tollgate" "tollgate/" "tollgate/"
    printf '%-12s | %9s %7s %7s | %9s %7s %7s | %9s %7s %7s | %8s %8s\n' \
        row RPS p50us p99us RPS p50us p99us RPS p50us p99us "nginx" "direct"
    for r in "${rows[@]}"; do
        c=${r%%:*}
        row="c=$c"
        [ "${r##*:}" = 1 ] && row="stream c=$c"
        printf '%-12s | %s | %s | %s | %8s %8s\n' "$row" \
            "$(cell "$row" direct)" "$(cell "$row" nginx)" "$(cell "$row" tollgate)" \
            "$(ratio "${res[$row,tollgate,rps]:-0}" "${res[$row,nginx,rps]:-0}")" \
            "$(ratio "${res[$row,tollgate,rps]:-0}" "${res[$row,direct,rps]:-0}")"
    done
    echo "('!' after a cell: that measurement had errors, see FAILED below)"
    if [ "$rounds" != 1 ]; then
        echo "RPS of every round:"
        for r in "${rows[@]}"; do
            c=${r%%:*}
            row="c=$c"
            [ "${r##*:}" = 1 ] && row="stream c=$c"
            printf '  %-12s direct %s| nginx %s| tollgate %s\n' "$row" \
                "${res[$row,direct,all_rps]}" "${res[$row,nginx,all_rps]}" "${res[$row,tollgate,all_rps]}"
        done
    fi
    echo

    # added p99 over direct at 1 connection
    added_tg=""
    if [ -n "${res[c=1,direct,p99_us]:-}" ]; then
        for tn in nginx tollgate; do
            if [ -n "${res[c=1,$tn,p99_us]:-}" ]; then
                a=$(( ${res[c=1,$tn,p99_us]} - ${res[c=1,direct,p99_us]} ))
                b=$(( ${res[c=1,$tn,p50_us]} - ${res[c=1,direct,p50_us]} ))
                printf 'added latency over direct at c=1: %-8s p99 %+d us, p50 %+d us\n' "$tn" "$a" "$b"
                [ "$tn" = tollgate ] && added_tg=$a
            fi
        done
    fi
    echo
    # disturbed ROW OTHER: a warning when processes that are not part of the
    # benchmark used more than 5 % of the CPUs during either compared cell
    disturbed() {
        local a=${res[$1,tollgate,foreign_pct]:-0} b=${res[$1,$2,foreign_pct]:-0}
        [ "$a" -le 5 ] && [ "$b" -le 5 ] ||
            printf ' -- INCONCLUSIVE: other processes used %s%% (%s) and %s%% (tollgate) of the CPUs; rerun' "$b" "$2" "$a"
    }
    echo "targets:"
    if [ -n "${res[c=64,nginx,rps]:-}" ] && [ -n "${res[c=64,tollgate,rps]:-}" ]; then
        rt=$(ratio "${res[c=64,tollgate,rps]}" "${res[c=64,nginx,rps]}")
        verdict=$(awk -v r="$rt" 'BEGIN { print (r >= 0.9) ? "MET" : "NOT MET" }')
        verdict+=$(disturbed c=64 nginx)
        [ "${res[c=64,tollgate,ok]}${res[c=64,nginx,ok]}" = 11 ] || verdict="NOT MEASURED (errors)"
        echo "  tollgate >= 0.9x nginx RPS at 64 connections: measured ${rt}x -> $verdict"
    else
        echo "  tollgate >= 0.9x nginx RPS at 64 connections: not measured (no c=64 row)"
    fi
    if [ -n "$added_tg" ]; then
        verdict=$([ "$added_tg" -le 50 ] && echo MET || echo "NOT MET")
        verdict+=$(disturbed c=1 direct)
        [ "${res[c=1,tollgate,ok]}${res[c=1,direct,ok]}" = 11 ] || verdict="NOT MEASURED (errors)"
        echo "  added p99 at 1 connection <= 50 us over direct: measured $added_tg us -> $verdict"
    else
        echo "  added p99 at 1 connection <= 50 us over direct: not measured (no c=1 row)"
    fi
    echo
    echo "CPU per request: user+sys time of the process (/proc/PID/stat) / requests, in us."
    echo "CPU of other processes (not the benchmark's, not kernel threads; /proc/*/stat incl. reaped"
    echo "children) and of the kernel (machine user+sys from /proc/stat minus all processes: network"
    echo "work not charged to a process, grows with the packet rate), in % of all $ncpu CPUs,"
    echo "for direct/nginx/tollgate. Other processes above a few % mean the cell was disturbed."
    printf '%-12s | %-22s | %-17s | %-13s | %-13s | %s\n' "" "upstream us/req" "proxy us/req" "other procs %" "kernel %" "steal %"
    printf '%-12s | %6s %6s %8s | %8s %8s | %-13s | %-13s | %s\n' \
        row direct nginx tollgate nginx tollgate "d/n/t" "d/n/t" "d/n/t"
    per_req() { # row target field
        local k="$1,$2"
        if [ -n "${res[$k,$3]:-}" ] && [ "${res[$k,requests]:-0}" -gt 0 ]; then
            awk -v ms="${res[$k,$3]}" -v n="${res[$k,requests]}" 'BEGIN { printf "%.1f", ms * 1000 / n }'
        else
            printf -- "-"
        fi
    }
    triple() { # row field -> "d/n/t"
        local out="" tn v
        for tn in direct nginx tollgate; do
            v=${res[$1,$tn,$2]:--}
            if [ "$2" = kernel ]; then
                v=-
                [ -z "${res[$1,$tn,other_pct]:-}" ] ||
                    v=$(( res_o = ${res[$1,$tn,other_pct]} - ${res[$1,$tn,foreign_pct]}, res_o < 0 ? 0 : res_o ))
            fi
            out+="$v/"
        done
        printf '%s' "${out%/}"
    }
    for r in "${rows[@]}"; do
        c=${r%%:*}
        row="c=$c"
        [ "${r##*:}" = 1 ] && row="stream c=$c"
        printf '%-12s | %6s %6s %8s | %8s %8s | %-13s | %-13s | %s\n' "$row" \
            "$(per_req "$row" direct up_ms)" "$(per_req "$row" nginx up_ms)" "$(per_req "$row" tollgate up_ms)" \
            "$(per_req "$row" nginx proxy_ms)" "$(per_req "$row" tollgate proxy_ms)" \
            "$(triple "$row" foreign_pct)" "$(triple "$row" kernel)" "$(triple "$row" steal_pct)"
    done
    echo
    echo "tollgate access log per row (metering cross-check). The log also holds requests that"
    echo "completed while wrk was stopping and those wrk cut off (499 client closed, at most one"
    echo "per connection); every status 200 should carry completion_tokens 16; 'other' should be 0:"
    for n in "${access_notes[@]}"; do echo "  $n"; done
    if [ ${#failed[@]} -gt 0 ]; then
        echo
        echo "FAILED:"
        for f in "${failed[@]}"; do echo "  $f"; done
    fi
} | tee "$result"
echo "bench: written to $result" >&2
if [ ${#failed[@]} -gt 0 ]; then
    keep_run=1
    exit 1
fi
