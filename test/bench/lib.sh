# lib.sh - shell pieces shared by the benchmark scripts (run.sh, proof.sh).
# Sourced, not run:   . "$here/lib.sh"   after `set -euo pipefail`.
#
# The sourcing script sets bench_name (the prefix of its messages) and then
# calls bench_init RUN-DIR-PREFIX, which makes the private run directory
# $run and installs the exit trap: every process started with `start` is
# stopped when the script exits (also on error or Ctrl-C), then the hook
# bench_after_stop runs if the script defines it (stop PostgreSQL there),
# and $run is removed unless the exit status is non-zero or keep_run=1.

bench_name=${bench_name:-bench}

die() { echo "$bench_name: $*" >&2; exit 1; }

# wrk durations "10s", "2m" or "10" (seconds) -> whole seconds
secs_of() {
    local v=$1
    case "$v" in
        *s) v=${v%s}; [[ $v =~ ^[0-9]+$ ]] || return 1; echo "$v" ;;
        *m) v=${v%m}; [[ $v =~ ^[0-9]+$ ]] || return 1; echo $((v * 60)) ;;
        *) [[ $v =~ ^[0-9]+$ ]] || return 1; echo "$v" ;;
    esac
}

# rand_hex BYTES: that many random bytes in hex
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# free_port: a TCP port on 127.0.0.1 nothing listens on (it may be taken
# before the caller binds it: callers retry)
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# ---- process bookkeeping: everything started here is stopped on exit -------
pids=()        # in start order
names=()       # same index: what it is
keep_run=0     # keep $run (logs) when something went wrong

bench_cleanup() {
    local rc=$? i pid
    set +e
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$bench_name: ${names[i]} (pid $pid) ignored SIGTERM for 5s; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    if declare -F bench_after_stop >/dev/null; then bench_after_stop; fi
    if [ "$rc" -ne 0 ] || [ "$keep_run" = 1 ]; then
        echo "$bench_name: logs kept in $run" >&2
    else
        rm -rf "$run"
    fi
    exit "$rc"
}

# bench_init PREFIX: the run directory /tmp/PREFIX.XXXXXX as $run, and the traps
bench_init() {
    run=$(mktemp -d "/tmp/$1.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# start NAME OUT ERR CMD...: CMD in the background, stdout appended to OUT,
# stderr to ERR; its pid goes to pids[] and is stopped on exit
start() {
    local name=$1 out=$2 err=$3
    shift 3
    "$@" >>"$out" 2>"$err" &
    pids+=($!)
    names+=("$name")
}

alive_or_die() { # index of pids[]
    local i=$1
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
        local st=0
        wait "${pids[i]}" || st=$?
        keep_run=1
        local how="exit status $st"
        [ "$st" -gt 128 ] && how="killed by signal $((st - 128)) (SIG$(kill -l $((st - 128))))"
        echo "$bench_name: ${names[i]} (pid ${pids[i]}) is gone, $how; last stderr lines:" >&2
        tail -n 20 "$run/${names[i]}.err" >&2 || true
        exit 1
    fi
}

# tollgate_port INDEX [FILE]: the port from tollgate's "listening on
# 127.0.0.1:PORT" in $run/NAME.err or FILE (its stdout: the operational log
# goes where log.file says, stderr or stdout)
tollgate_port() {
    local i=$1 out=${2:-/dev/null} port=""
    for _ in $(seq 100); do
        alive_or_die "$i"
        port=$(cat "$run/${names[i]}.err" "$out" 2>/dev/null | grep -o 'listening on 127\.0\.0\.1:[0-9]*' | head -n1 | sed 's/.*://') || true
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || die "${names[i]} did not report its port within 10s"
    echo "$port"
}

# start_nginx UPORT: nginx (test/bench/nginx.conf.in) on a free port in
# front of 127.0.0.1:UPORT; sets nginx_idx (in pids[]), nport and
# nginx_pids (master and worker, for the CPU accounting)
start_nginx() {
    local uport=$1 p line
    local -a f
    nginx_idx=""
    nport=""
    for _attempt in 1 2 3 4 5; do
        p=$(free_port) || continue
        mkdir -p "$run/nginx"
        sed -e "s|@DIR@|$run/nginx|g" -e "s|@PORT@|$p|g" -e "s|@UPORT@|$uport|g" \
            "$here/nginx.conf.in" >"$run/nginx/nginx.conf"
        : >"$run/nginx/error.log"
        start nginx /dev/null "$run/nginx.err" \
            nginx -p "$run/nginx/" -e "$run/nginx/error.log" -c "$run/nginx/nginx.conf"
        nginx_idx=$((${#pids[@]} - 1))
        for _ in $(seq 50); do
            kill -0 "${pids[nginx_idx]}" 2>/dev/null || break
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && { nport=$p; break; }
            sleep 0.1
        done
        [ -n "$nport" ] && break
        if grep -q "Address already in use" "$run/nginx/error.log" "$run/nginx.err" 2>/dev/null; then
            wait "${pids[nginx_idx]}" 2>/dev/null || true
            continue
        fi
        cat "$run/nginx.err" "$run/nginx/error.log" >&2
        keep_run=1
        die "nginx did not start"
    done
    [ -n "$nport" ] || die "no free port for nginx after 5 attempts"
    nginx_pids=("${pids[nginx_idx]}")
    for _ in $(seq 50); do   # nginx's workers: children of its master
        line=$({ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pp="${pids[nginx_idx]}" \
            '{ pid = $1; sub(/^.*\) /, ""); if ($2 == pp) printf "%s ", pid }')
        [ -z "$line" ] || break
        sleep 0.1
    done
    read -ra f <<<"$line"
    nginx_pids+=("${f[@]}")
    [ ${#nginx_pids[@]} -ge 2 ] || die "could not find nginx's worker process"
}

# bench_get FILE KEY [TAG]: a value from the line starting with TAG (BENCH:
# chat.lua's line from wrk; SSELOOP/SSEHOLD: sse_load's)
# check_target NAME URL KEY MODEL [HEADERS]: one plain and one streamed chat
# completion to URL must answer 200 with 16 completion tokens / [DONE];
# else the run stops (kept). HEADERS: extra "Name: value" joined by "|".
check_target() {
    local name=$1 url=$2 key=$3 model=$4 headers=${5:-} stream sfield body code ok h
    local hargs=() hs=()
    IFS='|' read -ra hs <<<"$headers"
    for h in "${hs[@]}"; do hargs+=(-H "$h"); done
    for stream in 0 1; do
        sfield=""
        [ $stream = 0 ] || sfield='"stream":true,'
        body="{\"model\":\"$model\",$sfield\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}"
        code=$(curl -sS -m 10 -o "$run/check.body" -w '%{http_code}' "${hargs[@]}" \
            -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
            -d "$body" "$url/v1/chat/completions") || code="curl failed"
        ok=1
        [ "$code" = 200 ] || ok=0
        if [ $stream = 1 ]; then
            tail -c 200 "$run/check.body" | grep -q 'data: \[DONE\]' || ok=0
        else
            grep -q '"completion_tokens":16' "$run/check.body" || ok=0
        fi
        if [ $ok = 0 ]; then
            keep_run=1
            echo "$bench_name: $name (stream=$stream) check failed: HTTP $code; body:" >&2
            head -c 600 "$run/check.body" >&2; echo >&2
            exit 1
        fi
    done
}

bench_get() {
    awk -v k="$2" -v tag="${3:-BENCH}" '$1 == tag { for (i = 2; i <= NF; i++) { split($i, kv, "=");
        if (kv[1] == k) { print kv[2]; exit } } }' "$1"
}

# ---- CPU accounting, to read the numbers on a shared box --------------------
# user+sys time of each of our processes (/proc/PID/stat), of the shell's
# waited-for children (bash `times`), of every other process and of the
# whole machine (/proc/stat), all in milliseconds. (A process may exit
# between the glob and the read: cat then fails, which must not fail the
# pipeline under pipefail.)
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
ncpu=$(nproc)
nginx_pids=()
bench_parent_pids=()   # processes whose children are ours too (PostgreSQL's postmaster)
proc_ms() { # PID... -> their summed user+sys CPU time
    local sum=0 pid line
    local -a f
    for pid in "$@"; do
        { line=$(<"/proc/$pid/stat"); } 2>/dev/null || continue
        read -ra f <<<"${line##*) }"
        sum=$((sum + f[11] + f[12]))
    done
    echo $((sum * 1000 / hz))
}
children_of_ms() { # PPID -> summed user+sys CPU time of its children
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pp="$1" -v hz="$hz" '
        { sub(/^.*\) /, ""); if ($2 == pp) t += $12 + $13 }
        END { printf "%d", t * 1000 / hz }'
}
machine_ms() { # -> "busy steal" (busy = user+nice+system, every CPU)
    local _c u n s _i _w _irq _sirq st _rest
    read -r _c u n s _i _w _irq _sirq st _rest </proc/stat
    echo "$(((u + n + s) * 1000 / hz)) $((st * 1000 / hz))"
}
children_ms() { # CPU time of this shell's waited-for children (wrk, curl, ...)
    times >"$run/times"
    awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60000 + a[2] * 1000 }
        printf "%d", t }' "$run/times"
}
others_ms() { # CPU of every other process on the box (user+sys incl. reaped children)
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v ex=" $$ ${pids[*]} ${nginx_pids[*]} ${bench_parent_pids[*]} " \
        -v pp=" ${bench_parent_pids[*]} " -v self=$$ -v hz="$hz" '
        { pid = $1; sub(/^.*\) /, "")   # fields from "state" on; comm may hold spaces
          if (pid == 2 || $2 == 2 || $2 == self || index(ex, " " pid " ")) next   # kernel threads, ours
          if (index(pp, " " $2 " ")) next                                        # their children
          t += $12 + $13 + $14 + $15 }
        END { printf "%d", t * 1000 / hz }'
}
