#!/usr/bin/env bash
# Installs what is missing, builds znet, then runs the seed's demo:
# rpc_server on 127.0.0.1:11111 (cmd 1 TestReq -> TestRsp, cmd 2 echo) and
# rpc_client against it; then the typed Greeter service (examples/greeter)
# with its client; then the raw echo server with its client. Each server is
# stopped with SIGINT and must exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/demo -j "${JOBS:-2}"

port=${PORT:-11111}
bin=build/demo/examples
server=

wait_port() {
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: nothing listens on port $port" >&2
    return 1
}

stop_server() {
    kill -INT "$server"
    wait "$server"
    server=
}
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; true' EXIT

echo "== rpc_server + rpc_client (the seed's demo)"
"$bin"/rpc_server --host 127.0.0.1 --port "$port" --workers 2 &
server=$!
wait_port
"$bin"/rpc_client --host 127.0.0.1 --port "$port"
"$bin"/rpc_client --host 127.0.0.1 --port "$port" --echo 65536 --count 1000
stop_server

echo "== greeter_server + greeter_client (a typed service, greeter.proto)"
"$bin"/greeter_server --port "$port" --workers 2 &
server=$!
wait_port
"$bin"/greeter_client --port "$port" newcomer
stop_server

echo "== echo_server + echo_client (the core alone)"
"$bin"/echo_server --host 127.0.0.1 --port "$port" &
server=$!
wait_port
"$bin"/echo_client --host 127.0.0.1 --port "$port" --count 10000 --size 64
stop_server
echo "demo: every server stopped cleanly"
