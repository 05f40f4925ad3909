#!/usr/bin/env bash
# The test suite, from a fresh machine: installs what it needs, then runs pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
