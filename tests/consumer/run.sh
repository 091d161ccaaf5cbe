#!/usr/bin/env bash
# Installs the znet build in $1 into a temporary prefix, then builds and
# runs a separate project against it twice: with find_package(znet), and
# with pkg-config znet.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src" -B "$tmp/b" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/b" >/dev/null
"$tmp/b/consumer" | grep -q "consumer: EAGAIN"

pcdir=$(find "$tmp/prefix" -name znet.pc -printf '%h\n' | head -1)
libdir=$(dirname "$pcdir")
PKG_CONFIG_PATH=$pcdir cc -o "$tmp/pc" "$src/main.c" \
    $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs znet) \
    -Wl,-rpath,"$libdir"
"$tmp/pc" | grep -q "consumer: EAGAIN"
echo "consumer: find_package and pkg-config both work"
