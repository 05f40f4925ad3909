#!/usr/bin/env bash
# Cross-compiles the runtime (library, testers, microkernel benchmark) for aarch64 into the
# given build directory, installing Debian's cross compiler and qemu-user (to run the testers)
# if missing.
#   bash runtime/scripts/cross_build_aarch64.sh build/runtime-aarch64
# Then the NEON microkernel (ukernel_6x16_neon) against the scalar reference, as a Pi 4 would run it:
#   QEMU_CPU=cortex-a72 qemu-aarch64-static -L /usr/aarch64-linux-gnu build/runtime-aarch64/ukernel_tester
# psconv_tester runs the same way; ukernel_bench's numbers mean nothing under emulation.
set -euo pipefail
runtime="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: cross_build_aarch64.sh BUILD_DIR}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if ((${#missing[@]})); then
  echo "cross_build_aarch64: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$runtime" -B "$out" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$runtime/cmake/aarch64-linux-gnu.cmake" >/dev/null
cmake --build "$out" --parallel 2 >/dev/null
echo "$out"
