#!/usr/bin/env bash
# A small second virtual environment with tflite-runtime, the interpreter many boards install.
# It needs numpy<2, which the main .venv (numpy 2, ai-edge-litert) cannot have, hence its own venv.
# Idempotent; prints the environment's python. Used by tests/test_export_tflite_runtime.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.cache/tflite-runtime-venv"
stamp="$venv/.installed-2.14.0"
if [ ! -f "$stamp" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  # tflite-runtime 2.14.0 is the last release; it has wheels for CPython 3.8 to 3.11 only.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "numpy<2" "tflite-runtime==2.14.0" >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
