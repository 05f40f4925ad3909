#!/usr/bin/env bash
# Builds an emulated Raspberry Pi 4 and Pi 5 (64-bit Raspberry Pi OS = Debian arm64 bookworm)
# that runs aarch64 Python under qemu-user: no VM, no chroot, no binfmt. Idempotent: a
# finished setup in .cache/pi-emulator/ is reused (delete it to rebuild). scripts/pi-python
# runs the emulated Python; tests/test_pi_emulated.py uses both.
#
#   .cache/pi-emulator/sysroot/   arm64 bookworm with python3.11 and libstdc++6 (unpacked .debs)
#   .cache/pi-emulator/pi4, pi5/  the sysroot seen through a board-specific /proc/cpuinfo
#   .cache/pi-emulator/wheels/    aarch64 wheels of pscompress's base dependencies
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
emu="$root/.cache/pi-emulator"
python="$root/.venv/bin/python"
# The dependencies a Pi's light install pulls in: pyproject's base list, pinned to what the
# workstation has so that emulated and host outputs come from the same onnxruntime.
base_deps=(numpy onnxruntime click tqdm pillow)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in qemu-user-static mmdebstrap g++-aarch64-linux-gnu; do
  dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-pi-emulator: installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Several test runs may share one checkout: one setup at a time.
mkdir -p "$emu"
exec 9>"$emu/.lock"
flock 9

if [ ! -f "$emu/sysroot/.complete" ]; then
  echo "setup-pi-emulator: building the arm64 bookworm sysroot"
  rm -rf "$emu/sysroot"
  # --variant=extract only unpacks the listed packages and their dependencies: nothing is
  # configured, so no arm64 code runs and no binfmt is needed.
  as_root mmdebstrap --quiet --mode=root --arch=arm64 --variant=extract \
    --include=python3.11,libstdc++6 bookworm "$emu/sysroot" \
    "deb http://deb.debian.org/debian bookworm main"
  # qemu looks every absolute path up in the sysroot first: its /dev and /tmp would shadow
  # the host's (and /tmp files written there would land in the sysroot).
  as_root rm -rf "$emu/sysroot/dev" "$emu/sysroot/tmp" "$emu/sysroot/proc"
  touch "$emu/sysroot/.complete"
fi

# qemu 7.2 passes the host's x86 /proc/cpuinfo through, and onnxruntime's CPU detection
# crashes on it: each board gets the cpuinfo of the real one. A board folder holds links to
# the sysroot's top-level entries plus its own proc/.
write_board() {  # name, cpu part, cpu variant, revision, features, model, board revision
  local board="$emu/$1" entry core cpuinfo
  cpuinfo="$(
    for core in 0 1 2 3; do
      printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\n' "$core" "$5"
      printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\n' "$3"
      printf 'CPU part\t: %s\nCPU revision\t: %s\n\n' "$2" "$4"
    done
    printf 'Revision\t: %s\nModel\t\t: %s\n' "$7" "$6"
  )"
  # Left alone when up to date: a test may be running on it.
  [ -f "$board/proc/cpuinfo" ] && [ "$(cat "$board/proc/cpuinfo")" = "$cpuinfo" ] && return
  rm -rf "$board"
  mkdir -p "$board/proc"
  for entry in "$emu/sysroot"/*; do ln -s "../sysroot/$(basename "$entry")" "$board/"; done
  printf '%s\n' "$cpuinfo" > "$board/proc/cpuinfo"
}
# Pi 4: Cortex-A72 (ARMv8.0-A). Pi 5: Cortex-A76 (ARMv8.2-A: fp16 arithmetic, dot product).
write_board pi4 0xd08 0x0 3 'fp asimd evtstrm crc32 cpuid' 'Raspberry Pi 4 Model B Rev 1.4' c03114
write_board pi5 0xd0b 0x4 1 \
  'fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp' \
  'Raspberry Pi 5 Model B Rev 1.0' c04170

# Same versions as the host venv: the test compares emulated against host outputs.
pins=()
for dep in "${base_deps[@]}"; do
  pins+=("$dep==$("$python" -c "import importlib.metadata as m; print(m.version('$dep'))")")
done
stamp="$emu/wheels/.complete"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins[*]}" ]; then
  echo "setup-pi-emulator: downloading aarch64 wheels: ${pins[*]}"
  rm -rf "$emu/wheels"
  mkdir -p "$emu/wheels"
  "$root/scripts/pi-pip" download -q --dest "$emu/wheels" "${pins[@]}"
  echo "${pins[*]}" > "$stamp"
fi

"$root/scripts/pi-python" --board pi4 -c 'import platform, sys; assert platform.machine() == "aarch64", platform.machine(); print("setup-pi-emulator: emulated Python", sys.version.split()[0], "on", platform.machine())'
