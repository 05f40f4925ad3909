#!/usr/bin/env bash
# An aarch64 site folder with tflite-runtime for the emulated Raspberry Pi: what
# `pip install tflite-runtime "numpy<2"` gives a Pi. It is kept apart from the emulator's main
# site, because tflite-runtime 2.14 needs numpy<2 and onnxruntime's wheels there use numpy 2.
# Idempotent (a finished site in .cache/pi-tflite/ is reused); prints the site folder.
# Needs the emulator from scripts/setup-pi-emulator.sh to run it: scripts/pi-python --site SITE.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.cache/pi-tflite"
# 2.14.0 is tflite-runtime's last release; its aarch64 wheel needs glibc 2.34 (bookworm has 2.36).
requirements=("tflite-runtime==2.14.0" "numpy<2")

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9  # several test runs may share one checkout

stamp="$dir/site/.complete"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${requirements[*]}" ]; then
  echo "setup-pi-tflite: installing ${requirements[*]} for aarch64" >&2
  rm -rf "$dir/wheels" "$dir/site"
  "$root/scripts/pi-pip" download -q --dest "$dir/wheels" "${requirements[@]}" >&2
  # pip may warn that the site's numpy conflicts with the workstation's packages: they never meet.
  "$root/scripts/pi-pip" install -q --no-index --find-links "$dir/wheels" --target "$dir/site" \
    "${requirements[@]}" >&2
  echo "${requirements[*]}" > "$stamp"
fi
echo "$dir/site"
