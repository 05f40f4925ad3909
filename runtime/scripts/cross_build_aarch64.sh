#!/usr/bin/env bash
# Cross-compiles the runtime (library, testers, microkernel benchmark) for aarch64 into the
# given build directory, installing the cross tools if missing (install_cross_tools.sh).
#   bash runtime/scripts/cross_build_aarch64.sh build/runtime-aarch64
# Then the NEON microkernel (ukernel_6x16_neon) against the scalar reference, as a Pi 4 would run it:
#   QEMU_CPU=cortex-a72 qemu-aarch64-static -L /usr/aarch64-linux-gnu build/runtime-aarch64/ukernel_tester
# psconv_tester runs the same way; ukernel_bench's numbers mean nothing under emulation.
set -euo pipefail
runtime="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: cross_build_aarch64.sh BUILD_DIR}"

bash "$runtime/scripts/install_cross_tools.sh"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$runtime" -B "$out" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$runtime/cmake/aarch64-linux-gnu.cmake" >/dev/null
cmake --build "$out" --parallel 2 >/dev/null
echo "$out"
