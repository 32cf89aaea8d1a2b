#!/usr/bin/env bash
# Builds a Release tollgate and installs it under a prefix: the steps the
# Dockerfile's build stage runs, and CI runs too (test/run-all.sh), so a
# change that breaks the image's build breaks CI.
#
#   cmake/build.sh [--prefix DIR] [--check]
#
# DIR (default /opt/tollgate) gets bin/tollgate, share/tollgate/prices.json,
# share/tollgate/tokenizer/*.tgbpe and share/tollgate/runtime-packages: the
# Debian packages the binary's shared libraries come from, for a runtime
# image to install (the build tools stay behind). --check then starts the
# installed binary on its embedded default (DB-less, the mock provider) from
# an empty directory, asks /health/ready and one chat completion with the
# demo key, and stops it with SIGTERM: exit 0 expected.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
prefix=/opt/tollgate
check=0
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --check) check=1; shift ;;
    *) echo "usage: $0 [--prefix DIR] [--check]" >&2; exit 2 ;;
    esac
done

bash cmake/install-deps.sh run
build=${TG_RELEASE_BUILD:-$root/build-release}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTG_BUILD_TESTS=OFF \
    -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
cmake --build "$build" -j"$(nproc)"
cmake --install "$build" >/dev/null

# the runtime packages: the owners of the shared libraries it loads
ldd "$prefix/bin/tollgate" | awk '/=> \// {print $3}' | while read -r lib; do
    dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true
done | cut -d: -f1 | sort -u >"$prefix/share/tollgate/runtime-packages"
if ldd "$prefix/bin/tollgate" | grep -q "not found"; then
    echo "build.sh: unresolved libraries:" >&2
    ldd "$prefix/bin/tollgate" | grep "not found" >&2
    exit 1
fi
for f in share/tollgate/prices.json share/tollgate/tokenizer/o200k_base.tgbpe \
    share/tollgate/tokenizer/cl100k_base.tgbpe; do
    [ -s "$prefix/$f" ] || { echo "build.sh: $prefix/$f is missing" >&2; exit 1; }
done
echo "installed tollgate $("$prefix/bin/tollgate" --version) in $prefix" \
    "(runtime packages: $(tr '\n' ' ' <"$prefix/share/tollgate/runtime-packages"))"

[ "$check" = 1 ] || exit 0
dir=$(mktemp -d /tmp/tollgate-check.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
key=tg-build-check-0123456789abcdef
# the installed data files, not the build tree's (which the binary would
# prefer while it exists; an image has only the installed ones)
(cd "$dir" && exec env -i PATH=/usr/bin:/bin TOLLGATE_LISTEN="127.0.0.1:$port" \
    TOLLGATE_DEMO_KEY="$key" TOLLGATE_TOKENIZER_DIR="$prefix/share/tollgate/tokenizer" \
    TOLLGATE_PRICES_FILE="$prefix/share/tollgate/prices.json" \
    "$prefix/bin/tollgate" >"$dir/out.log" 2>"$dir/err.log") &
pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null || {
    echo "build.sh: the installed binary did not become ready" >&2
    cat "$dir/out.log" "$dir/err.log" >&2
    exit 1
}
answer=$(curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"model":"mock-1","messages":[{"role":"user","content":"Hi"}]}' \
    "http://127.0.0.1:$port/v1/chat/completions")
echo "$answer" | grep -q '"choices"' || { echo "build.sh: bad answer: $answer" >&2; exit 1; }
# the operational log goes to stdout by default (log.file)
if ! cat "$dir/out.log" "$dir/err.log" |
        grep -q "tokenizer: o200k_base and cl100k_base from $prefix/share/tollgate/tokenizer" ||
    cat "$dir/out.log" "$dir/err.log" | grep -q "price catalog not loaded"; then
    echo "build.sh: the installed tokenizer data or price catalog did not load:" >&2
    cat "$dir/out.log" "$dir/err.log" >&2
    exit 1
fi
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[ "$rc" = 0 ] || { echo "build.sh: exit $rc after SIGTERM" >&2; cat "$dir/out.log" "$dir/err.log" >&2; exit 1; }
echo "build.sh: the installed binary serves and drains"
