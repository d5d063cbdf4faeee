#!/usr/bin/env bash
# The test suite: set up .venv, then run every engine and Slicer-side test.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k proxy
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "${PAIRSEG_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
