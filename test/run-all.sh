#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, builds with
# AddressSanitizer + UndefinedBehaviorSanitizer, runs the unit tests
# (ctest) and the integration tests (node --test, real SDK clients,
# TLS mock upstreams).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bash cmake/install-deps.sh test

build=${TG_TEST_BUILD:-$root/build-test}
cmake -S "$root" -B "$build" -DTG_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$build" -j"$(nproc)"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

echo "== unit tests"
(cd "$build" && ctest --output-on-failure -j2)

echo "== integration tests"
(cd test/integration && npm ci --no-audit --no-fund --loglevel=error)
TOLLGATE_BIN="$build/tollgate" node --test --test-concurrency=1 --test-timeout=120000 \
  test/integration/

echo "== release build and install (the Dockerfile's build steps: cmake/build.sh)"
prefix=$(mktemp -d /tmp/tollgate-prefix.XXXXXX)
bash cmake/build.sh --prefix "$prefix" --check
# the compose example's config stays loadable
TOLLGATE_INSTANCE=ci TOLLGATE_SECRET_KEY=$("$prefix/bin/tollgate" keygen) \
  TOLLGATE_MASTER_KEY=tg-ci-master-key-0123456789abcdef \
  "$prefix/bin/tollgate" check-config examples/compose/tollgate.yaml
rm -rf "$prefix"
