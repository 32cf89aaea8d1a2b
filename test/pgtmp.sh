#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests.
#
#   pgtmp.sh start DIR    initdb in DIR/data, start it listening on
#                         127.0.0.1 (a free port) and on a socket in DIR,
#                         create database "tollgate"; print a libpq
#                         conninfo on stdout: host=127.0.0.1 port=N ...
#   pgtmp.sh stop DIR     stop it (fast shutdown) and remove DIR
#   pgtmp.sh pause DIR    stop the server, keep the data (restart tests)
#   pgtmp.sh resume DIR   start it again on the same port
#
# PostgreSQL refuses to run as root, so as root the server runs as the
# "postgres" user, and DIR must be reachable by it (mktemp -d /tmp/x.XXXXXX).
# DIR is handed to that user. Logs: DIR/log.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: $0 start|stop|pause|resume DIR" >&2
  exit 2
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "pgtmp: PostgreSQL server binaries not found (apt-get install postgresql)" >&2
  exit 1
fi

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "pgtmp: no free port found" >&2
  return 1
}

pg_start() {
  local port=$1
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=200 -c shared_preload_libraries=pg_stat_statements" \
    start >/dev/null
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >/dev/null
    for attempt in 1 2 3 4 5; do
      port=$(free_port)
      if pg_start "$port"; then
        echo "$port" >"$dir/port"
        break
      fi
      [ "$attempt" -eq 5 ] && { cat "$dir/log" >&2; exit 1; }
    done
    as_pg "$bindir/createdb" -h "$dir" -p "$port" -U postgres tollgate
    echo "host=127.0.0.1 port=$port user=postgres dbname=tollgate"
    ;;
  pause)
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  resume)
    pg_start "$(cat "$dir/port")"
    ;;
  stop)
    if [ -d "$dir/data" ]; then
      as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|stop|pause|resume DIR" >&2
    exit 2
    ;;
esac
