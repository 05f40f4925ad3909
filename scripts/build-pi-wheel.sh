#!/usr/bin/env bash
# Builds the Raspberry Pi wheel: pscompress with its kernel library cross-compiled for aarch64
# (ARMv8.0-A with NEON: Pi 4 and Pi 5, 64-bit Raspberry Pi OS), tagged
# py3-none-manylinux_2_N_aarch64. A Pi installs it with pip and no compiler; its base install
# pulls numpy, onnxruntime, click, tqdm and pillow, never PyTorch.
#
#   scripts/build-pi-wheel.sh [OUTDIR]     (default dist/; prints the wheel's path last)
#
# Builds from a copy of the working tree (never from build outputs lying in it), and keeps the
# result in .cache/pi-wheel/ keyed by the sources' hash, so a second run costs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
python="$root/.venv/bin/python"
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  echo "build-pi-wheel: installing g++-aarch64-linux-gnu" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq g++-aarch64-linux-gnu >/dev/null
fi

# What goes into the wheel, tracked or not yet, minus everything .gitignore keeps out.
mapfile -d '' sources < <(git ls-files -z --cached --others --exclude-standard -- \
  pscompress exporters runtime setup.py pyproject.toml README.md LICENSE \
  scripts/build-pi-wheel.sh scripts/pi_wheel.py)
existing=()
for f in "${sources[@]}"; do [ -f "$f" ] && existing+=("$f"); done
key="$( (aarch64-linux-gnu-g++ --version | head -n1; for f in "${existing[@]}"; do printf '%s\0' "$f"; cat "$f"; done) \
  | sha256sum | cut -c1-16)"
cache="$root/.cache/pi-wheel/$key"
# Several test runs may share one checkout: one build at a time.
mkdir -p "$root/.cache/pi-wheel"
exec 9>"$root/.cache/pi-wheel/.lock"
flock 9

if ! compgen -G "$cache/*.whl" >/dev/null; then
  # A fixed staging folder keeps setup.py's CMake build folder (stage/build/) between runs, so
  # a source change recompiles only what it touches.
  stage="$root/.cache/pi-wheel/stage"
  mkdir -p "$stage"
  find "$stage" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
  printf '%s\0' "${existing[@]}" | tar -C "$root" --null -T - -cf - | tar -C "$stage" -xf -
  echo "build-pi-wheel: cross-compiling the kernel library for aarch64" >&2
  # The library links libstdc++ statically (runtime/CMakeLists.txt): pi_wheel.py checks that
  # it needs nothing but glibc and tags the wheel by the newest glibc version it uses.
  PSCOMPRESS_REQUIRE_NATIVE=1 \
  PSCOMPRESS_CMAKE_ARGS="-DCMAKE_TOOLCHAIN_FILE=$stage/runtime/cmake/aarch64-linux-gnu.cmake" \
    "$python" -m pip wheel -q --no-deps --disable-pip-version-check \
    -w "$stage/wheel" "$stage" >&2
  rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
  "$python" "$root/scripts/pi_wheel.py" "$stage"/wheel/pscompress-*.whl "$cache.tmp" aarch64-linux-gnu-readelf >/dev/null
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
wheel="$(ls "$cache"/*.whl)"
cp "$wheel" "$out_dir/"
echo "$out_dir/$(basename "$wheel")"
