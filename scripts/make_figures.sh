#!/usr/bin/env bash
# Regenerate the committed figures in figs/ from a fresh demo run (never called by `make demo`):
#   bash scripts/make_figures.sh [--device cpu|cuda|auto] [--seed 0] [--own-images-only]
# Runs scripts/demo.py into a temporary folder (fresh initial weights, training, evaluations), then copies
# its figures: training curves, keypoint-transfer examples before/after training, the pixel-level
# visualisation. Then the "your own images" example: validation_and_test/match.py on the bundled stereo pair
# (scripts/sample_photos.py) with the demo preset (seeded random ResNet-18, no download), as
# figs/own_images_matches.png and figs/own_images_warp.png (--own-images-only: this step alone).
# Deterministic for a seed on one device (same configs, same seeded weights and draws).
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
DEVICE=cpu
SEED=0
OWN_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --own-images-only) OWN_ONLY=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (use --device, --seed, --own-images-only)" >&2; exit 2 ;;
  esac
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/demo-figs.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
mkdir -p figs

"$PY" scripts/sample_photos.py "$TMP/photos"
"$PY" validation_and_test/match.py "$TMP/photos/motorcycle_left.png" "$TMP/photos/motorcycle_right.png" \
  --preset demo --seed "$SEED" --grid 8 --device "$DEVICE" --output-dir "$TMP/own_images"
install -m 644 "$TMP/own_images/matches.png" figs/own_images_matches.png
install -m 644 "$TMP/own_images/warp.png" figs/own_images_warp.png
if [ "$OWN_ONLY" = 1 ]; then
  echo "figures written: figs/own_images_matches.png figs/own_images_warp.png"
  exit 0
fi

"$PY" scripts/demo.py --output-dir "$TMP/demo" --device "$DEVICE" --seed "$SEED" log.progress=false

rm -f figs/training_curves.png figs/pixel_level.png figs/transfer_before_*.png figs/transfer_after_*.png
cp "$TMP"/demo/figs/*.png figs/
install -m 644 "$TMP/demo/results.json" figs/demo_results.json
echo "figures written to figs/:"
ls -1 figs
