#!/usr/bin/env bash
# Installs, when missing, Debian's tools for aarch64 work without a board: the cross compiler,
# qemu-user (runs the testers) and llvm (llvm-mca, the static throughput of the NEON kernels).
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v llvm-mca >/dev/null || missing+=(llvm)
if ((${#missing[@]})); then
  echo "install_cross_tools: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
