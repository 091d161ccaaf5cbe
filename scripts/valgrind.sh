#!/usr/bin/env bash
# Runs a subset of the test binaries of a normal (non-sanitizer) build under
# valgrind memcheck (docs/testing.md). A binary fails on a memcheck error
# (exit code 99), a definite or indirect leak, a failed test, a time-out,
# or a descriptor left open at exit: valgrind's "FILE DESCRIPTORS: N open"
# count minus stdin, stdout, stderr and what the process inherited (its
# own log file among them) must be 0. Processes a test forks get logs of
# their own; their memcheck errors count, their descriptors do not (a
# forked child exits without closing what it shares with its parent).
#
#   scripts/valgrind.sh [BUILD_DIR]      default build/normal
#
# Environment:
#   VALGRIND_TESTS    binaries to run, relative to BUILD_DIR (default below)
#   VALGRIND_TIMEOUT  seconds per binary (default 300)
#
# The logs stay in BUILD_DIR/valgrind/ for a failure to be read. Ends with
# one summary line; exits non-zero if any binary failed.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-build/normal}
# Left out: test_server, whose EMFILE case lowers RLIMIT_NOFILE, which
# valgrind intercepts (EMFILE never comes); test_log and test_conn, which
# flood from threads under deadlines (test_log's alarm, 20 s in
# test_conn's senders) that valgrind's slowdown breaks.
tests=${VALGRIND_TESTS:-"tests/test_common tests/test_buf tests/test_loop
    tests/test_client
    tests/msg/test_frame tests/msg/test_pbsafe tests/msg/test_rpc
    tests/msg/test_msg tests/msg/test_stress"}
limit=${VALGRIND_TIMEOUT:-300}
logs=$dir/valgrind

if ! command -v valgrind >/dev/null; then
    echo "valgrind: not installed" >&2
    exit 2
fi
rm -rf "$logs"
mkdir -p "$logs"

# main_log <name>: the log of the process whose parent is not one of the
# logged processes, i.e. the test itself, not a child it forked.
main_log() {
    local f pid parent pids
    pids=" $(for f in "$logs/$1".vg.*; do echo -n "${f##*.} "; done)"
    for f in "$logs/$1".vg.*; do
        parent=$(sed -n 's/^==[0-9]*== Parent PID: \([0-9]*\)$/\1/p' "$f")
        [[ $pids == *" $parent "* ]] || { echo "$f"; return; }
    done
}

# leaked_fds <log>: descriptors open at exit, less the standard ones
# ("N open (3 std)": valgrind does not list those) and the inherited ones.
leaked_fds() {
    local open std inherited
    open=$(sed -n 's/.*FILE DESCRIPTORS: \([0-9]*\) open.*/\1/p' "$1")
    std=$(sed -n 's/.*FILE DESCRIPTORS: [0-9]* open (\([0-9]*\) std).*/\1/p' \
        "$1")
    inherited=$(grep -c '<inherited from parent>' "$1" || true)
    echo $(( ${open:-0} - ${std:-3} - ${inherited:-0} ))
}

# run <binary>: runs it under memcheck; prints one line; returns non-zero
# if it failed.
run() {
    local bin=$1 name start rc log fds errs why=""
    name=$(basename "$bin")
    start=$(date +%s)
    rc=0
    timeout -k 10 "$limit" valgrind --tool=memcheck --error-exitcode=99 \
        --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --track-fds=yes --log-file="$logs/$name.vg.%p" \
        "$dir/$bin" >"$logs/$name.out" 2>&1 || rc=$?
    log=$(main_log "$name")
    fds=$( [[ -n $log ]] && leaked_fds "$log" || echo "?")
    errs=$(grep -h 'ERROR SUMMARY' "$logs/$name".vg.* |
        awk '{ n += $4 } END { print n + 0 }')
    (( rc == 124 || rc == 137 )) && why+=" time-out (${limit} s)"
    (( rc == 99 )) && why+=" memcheck errors"
    (( rc > 128 && rc != 137 )) && why+=" killed by signal $(( rc - 128 ))"
    (( rc != 0 && rc != 99 && rc < 124 )) && why+=" exit $rc"
    (( errs > 0 && rc != 99 )) && why+=" memcheck errors in a child"
    [[ $fds != 0 ]] && why+=" $fds descriptor(s) left open"
    printf 'valgrind: %-16s %4d s  %s\n' "$name" $(( $(date +%s) - start )) \
        "${why:-ok}"
    [[ -z $why ]]
}

start=$(date +%s)
total=0
failed=()
for t in $tests; do
    total=$(( total + 1 ))
    [[ -x $dir/$t ]] || { echo "valgrind: $dir/$t: not built" >&2; exit 2; }
    run "$t" || failed+=("$(basename "$t")")
done
secs=$(( $(date +%s) - start ))
if (( ${#failed[@]} > 0 )); then
    echo "valgrind: FAILED ${#failed[@]} of $total in $secs s:" \
        "${failed[*]} (logs in $logs)"
    exit 1
fi
echo "valgrind: all $total passed in $secs s (memcheck, leaks, descriptors)"
