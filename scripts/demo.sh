#!/usr/bin/env bash
# The main job on an embedded default: set up .venv, then `pairseg demo`, which trains a C2FCN
# briefly on generated phantom MR volumes, segments a held-out volume and prints Dice/ASSD.
# Pass options through, e.g.  scripts/demo.sh --data ../shared/data/chaos_t2 --size 128
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
exec "${PAIRSEG_VENV:-$ROOT/.venv}/bin/pairseg" demo "$@"
