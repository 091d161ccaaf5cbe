#!/usr/bin/env bash
# Builds znet and runs every test: the whole suite in a normal build (with
# -Werror, gcc), a clang build for warnings, the whole suite again under
# ASan+UBSan, each libFuzzer target for a bounded time (FUZZ_SECONDS,
# default 30) over the committed corpus and the source coverage it reached, a subset under valgrind memcheck,
# a soak of SOAK_SECONDS (default 120), and the threaded tests under TSan.
#
#   scripts/test.sh            all of it
#   JOBS=4 scripts/test.sh     more parallel builds
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

jobs=${JOBS:-2}
common=(-DZNET_WERROR=ON -DZNET_BUILD_EXAMPLES=ON)

build() { # build <dir> <cmake args...>
    local dir=$1; shift
    cmake -S . -B "$dir" "${common[@]}" "$@" >/dev/null
    cmake --build "$dir" -j "$jobs"
}

echo "== normal build (gcc, -Werror)"
build build/normal -DCMAKE_BUILD_TYPE=RelWithDebInfo
(cd build/normal && ctest -j "$jobs" --output-on-failure)

echo "== clang build (warnings only)"
CC=clang build build/clang -DCMAKE_BUILD_TYPE=Debug -DZNET_BUILD_TESTS=ON

echo "== ASan + UBSan"
build build/asan -DCMAKE_BUILD_TYPE=Debug -DZNET_ASAN=ON
(cd build/asan &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest -j "$jobs" --output-on-failure)

echo "== libFuzzer (${FUZZ_SECONDS:-30} s per target)"
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

echo "== fuzz coverage (source lines and regions per target)"
scripts/fuzz-coverage.sh

echo "== valgrind memcheck (a subset, with --track-fds)"
scripts/valgrind.sh build/normal

echo "== soak (${SOAK_SECONDS:-120} s of mixed load with faults)"
SOAK_BUILD_DIR=build/normal scripts/soak.sh "${SOAK_SECONDS:-120}"

echo "== TSan (threaded tests)"
build build/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZNET_TSAN=ON
(cd build/tsan &&
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest -j "$jobs" -L threaded --output-on-failure)
