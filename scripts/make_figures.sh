#!/usr/bin/env bash
# Regenerate the committed figures in figs/ from a fresh demo run (never called by `make demo`):
#   bash scripts/make_figures.sh [--device cpu|cuda|auto] [--seed 0]
# Runs scripts/demo.py into a temporary folder (fresh initial weights, training, evaluations), then copies
# its figures: training curves, keypoint-transfer examples before/after training, the pixel-level
# visualisation. Deterministic for a seed on one device (same configs, same seeded weights and draws).
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
DEVICE=cpu
SEED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (use --device, --seed)" >&2; exit 2 ;;
  esac
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/demo-figs.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
"$PY" scripts/demo.py --output-dir "$TMP/demo" --device "$DEVICE" --seed "$SEED" log.progress=false

mkdir -p figs
rm -f figs/training_curves.png figs/pixel_level.png figs/transfer_before_*.png figs/transfer_after_*.png
cp "$TMP"/demo/figs/*.png figs/
install -m 644 "$TMP/demo/results.json" figs/demo_results.json
echo "figures written to figs/:"
ls -1 figs
