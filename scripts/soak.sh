#!/usr/bin/env bash
# The soak (docs/testing.md): builds the soak driver and znet-test-server
# (tests/server) in the normal build (configured as scripts/test.sh does),
# then runs the server (--io-threads 2 --workers 2) under a mixed load with faults for SECONDS,
# sampling its RSS and descriptors every second. Fails if either grows
# after the warm-up, if descriptors are not back to the baseline after the
# load, if a client saw an unexpected outcome, if the server does not exit
# 0 on SIGTERM, or if its log has an ERROR (or a sanitizer report).
#
#   scripts/soak.sh [SECONDS]        default 120; longer by hand
#
# Environment:
#   SOAK_BUILD_DIR   the build directory (default build/normal)
#   JOBS             parallel build jobs (default 2)
#
# The server's log is left in SOAK_BUILD_DIR/soak-server.log.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-120}
dir=${SOAK_BUILD_DIR:-build/normal}

cmake -S . -B "$dir" -DZNET_WERROR=ON -DZNET_BUILD_EXAMPLES=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$dir" -j "${JOBS:-2}" --target soak znet-test-server \
    >/dev/null
exec "$dir/tests/soak/soak" "$dir/tests/server/znet-test-server" "$secs" \
    "$dir/soak-server.log"
