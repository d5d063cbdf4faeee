#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) with everything PairSeg needs:
# the engine (editable), its test tools and the slicer-core wheel for headless MRML tests.
# Re-running is cheap: nothing is reinstalled unless pyproject.toml or the pins changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PAIRSEG_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "pairseg: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.pairseg-env"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/constraints.txt" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ] || ! "$VENV/bin/python" -c "import pairseg, torch, slicer" 2>/dev/null; then
  echo "pairseg: installing dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first, pinned to the CPU build that is available locally; the constraints keep it there.
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/requirements/constraints.txt" torch
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/requirements/constraints.txt" -e "$ROOT[test,slicer]"
  echo "$WANT" > "$STAMP"
fi
