#!/usr/bin/env bash
# Source-level coverage of each fuzz target (docs/fuzzing.md): builds the
# replay programs (fuzz/replay_main.c in place of libFuzzer) with clang's
# source-based coverage, runs each over its corpus, and prints the line and
# region coverage of the source files that target exercises.
#
#   scripts/fuzz-coverage.sh
#
# The corpus of a target is the one the last scripts/fuzz.sh run grew
# (build/fuzz/corpus-<target>) if there is one, else the committed seeds
# (fuzz/corpus/<target>), plus fuzz/crashers. Reports stay in
# build/fuzz-cov/<target>.txt (per-function details: llvm-cov show).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=build/fuzz-cov
llvm=$(ls -d /usr/lib/llvm-*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$llvm" ] || [ ! -x "$llvm/llvm-cov" ] ||
    [ ! -x "$llvm/llvm-profdata" ]; then
    echo "fuzz-coverage: llvm-cov and llvm-profdata not found" >&2
    exit 2
fi

CC=clang cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_C_FLAGS="-fprofile-instr-generate -fcoverage-mapping" \
    -DZNET_WERROR=ON -DZNET_BUILD_TESTS=ON -DZNET_BUILD_EXAMPLES=OFF \
    >/dev/null
cmake --build "$dir" -j "${JOBS:-2}" \
    --target replay_frame replay_dispatch replay_buf replay_heap >/dev/null

# files <target>: the sources a target is there to cover.
files() {
    case $1 in
    frame) echo src/msg/frame.c ;;
    dispatch) echo src/msg/frame.c src/msg/pbsafe.c src/msg/service.c \
        src/msg/table.c ;;
    buf) echo src/buf.c ;;
    heap) echo src/heap.h ;;
    esac
}

for t in frame dispatch buf heap; do
    corpus=build/fuzz/corpus-$t
    [ -d "$corpus" ] || corpus=fuzz/corpus/$t
    raw=$dir/$t.profraw
    rm -f "$raw"
    LLVM_PROFILE_FILE=$raw "$dir/tests/replay_$t" "$corpus" fuzz/crashers \
        >/dev/null
    "$llvm/llvm-profdata" merge -sparse "$raw" -o "$dir/$t.profdata"
    # shellcheck disable=SC2046
    "$llvm/llvm-cov" report "$dir/tests/replay_$t" \
        -instr-profile="$dir/$t.profdata" $(files $t) >"$dir/$t.txt"
    total=$(grep '^TOTAL' "$dir/$t.txt")
    read -r -a f <<<"$total"
    # TOTAL regions missed cover functions missed cover lines missed cover
    # (then branches, if any)
    echo "fuzz_$t: $(ls "$corpus" | wc -l) inputs from $corpus;" \
        "lines ${f[9]}, regions ${f[3]} ($(files $t))"
done
