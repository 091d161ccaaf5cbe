#!/usr/bin/env bash
# Installs the Debian packages znet needs to build, test and benchmark.
# Idempotent: does nothing when everything is present. Needs root (or sudo).
set -euo pipefail

pkgs=(build-essential cmake pkg-config clang libclang-rt-14-dev llvm
      libprotobuf-c-dev protobuf-c-compiler libcmocka-dev
      protobuf-compiler python3 python3-protobuf
      libevent-dev libuv1-dev valgrind gnuplot-nox)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
