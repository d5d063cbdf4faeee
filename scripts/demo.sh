#!/usr/bin/env bash
# The main job on an embedded default: set up .venv, then `pairseg demo`, which segments the
# embedded CHAOS MR case (Resources/SampleData) with the shipped model (Resources/Models), prints
# Dice/ASSD per organ against the expert label and writes the .seg.nrrd and an overlay PNG into
# pairseg-demo-output/. Pass options through, e.g.  scripts/demo.sh --train   (fine-tune first)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
exec "${PAIRSEG_VENV:-$ROOT/.venv}/bin/pairseg" demo "$@"
