#!/usr/bin/env bash
# Installs everything pscompress needs on a fresh Debian/Ubuntu machine: system packages,
# then a virtual environment in .venv with the workstation and test extras. Idempotent:
# a second run only checks. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=(dataset-fashion-mnist cmake g++)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch==2.13.0 (pinned in pyproject) is the local CPU build; anything looser pulls CUDA.
stamp=.venv/.pscompress-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "bootstrap: installing pscompress and its dependencies into .venv"
  .venv/bin/python -m pip install -q -e '.[workstation,test]' 2>&1 | grep -vE '^(WARNING: Location|  )' || true
  .venv/bin/python -c 'import pscompress, torch, onnxruntime' || { echo "bootstrap: install failed" >&2; exit 1; }
  touch "$stamp"
fi
# The editable install built the native kernel library once: rebuild it when runtime/ changed
# (or when a cached .venv came without the library, which lives in the source tree).
lib=runtime/python/libpscompress_ort.so
if [ ! -f "$lib" ] || [ -n "$(find runtime -newer "$lib" -type f \( -name '*.cc' -o -name '*.h' -o -name 'CMakeLists.txt' -o -name '*.cmake' \) -print -quit)" ]; then
  echo "bootstrap: rebuilding the native kernel library"
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -vE '^(WARNING: Location|  )' || true
fi
