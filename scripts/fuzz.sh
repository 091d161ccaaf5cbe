#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build/fuzz and runs each one
# for a bounded time over a copy of its seed corpus (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS]       each target SECONDS (default 60)
#
# Environment:
#   ZNET_FUZZ_PROTOBUF_C_SOURCE  path of protobuf-c.c from a protobuf-c
#                                source tree, compiled in instrumented
#                                (default: the system libprotobuf-c)
#   FUZZ_TARGETS                 default "frame dispatch buf heap"
#   JOBS                         parallel build jobs (default 2)
#
# Prints the executions and the coverage of each target. Fails if a target
# found a crash, a leak, a time-out or an out-of-memory: the input is left
# in build/fuzz/artifacts-<target>/; reproduce it with
# build/fuzz/fuzz/fuzz_<target> FILE, and once fixed add it to
# fuzz/crashers/ so that CTest replays it for ever.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
dir=build/fuzz
targets=${FUZZ_TARGETS:-frame dispatch buf heap}
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer"
flags+=" -fno-sanitize-recover=undefined -g"

CC=clang cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS="$flags" -DZNET_FUZZ=ON -DZNET_WERROR=ON \
    -DZNET_BUILD_TESTS=OFF -DZNET_BUILD_EXAMPLES=OFF \
    -DZNET_FUZZ_PROTOBUF_C_SOURCE="${ZNET_FUZZ_PROTOBUF_C_SOURCE:-}" \
    >/dev/null
cmake --build "$dir" -j "${JOBS:-2}" \
    --target $(printf 'fuzz_%s ' $targets)

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

failed=0
for t in $targets; do
    corpus=$dir/corpus-$t
    artifacts=$dir/artifacts-$t
    log=$dir/fuzz-$t.log
    mkdir -p "$corpus" "$artifacts"
    cp fuzz/corpus/"$t"/* "$corpus"/
    echo "== fuzz_$t: $secs s (log: $log)"
    rc=0
    "$dir/fuzz/fuzz_$t" -max_total_time="$secs" -max_len=65536 \
        -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$corpus" fuzz/crashers \
        >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    echo "fuzz_$t: ${execs:-?} executions, cov: ${cov:-?}, ft: ${ft:-?}," \
        "corpus ${corp:-?}"
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "fuzz_$t: FAILED (exit $rc); the end of its log:"
        tail -n 40 "$log"
        ls -l "$artifacts"
    fi
done
exit $failed
