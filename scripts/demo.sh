#!/usr/bin/env bash
# Installs what is missing, builds znet, starts the echo server and runs
# the echo client against it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/demo -j "${JOBS:-2}"

port=${PORT:-11111}
build/demo/examples/echo_server --host 127.0.0.1 --port "$port" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do # wait until it listens
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 0.1
done
build/demo/examples/echo_client --host 127.0.0.1 --port "$port" \
    --count 10000 --size 64
kill -INT "$server"
wait "$server"
echo "demo: the echo server stopped cleanly"
trap - EXIT
