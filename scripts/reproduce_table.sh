#!/usr/bin/env bash
# Every cell of the README's results table: SCOT baseline (torchvision ImageNet ResNet-50) and ours.
#   bash scripts/reproduce_table.sh [--dry-run] [--datapath ROOT] [--runs runs] [-- extra test.py flags]
# Each command writes runs/eval/<dataset>-<time>/results.json; our rows need runs/<benchmark>_r50/checkpoints/last.pth
# (train with: python training/train.py --config configs/train/<benchmark>_r50.yaml --output-dir runs/<benchmark>_r50).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0; datapath="${DATASETS:-Datasets_SCOT}"; runs=runs; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --datapath) datapath="$2"; shift ;;
    --runs) runs="$2"; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown option $1 (use --dry-run, --datapath ROOT, --runs DIR, -- FLAGS)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python}"
cells=("pfpascal 0.05" "pfpascal 0.1" "pfpascal 0.15" "pfwillow 0.05" "pfwillow 0.1" "pfwillow 0.15" "spair 0.1")
run() { echo "+ $*"; [ "$dry" = 1 ] || "$@"; }
for weights in imagenet ours; do
  for cell in "${cells[@]}"; do
    set -- $cell
    w=imagenet; [ "$weights" = ours ] && w="$runs/${1}_r50/checkpoints/last.pth"
    run "$PY" validation_and_test/test.py --dataset "$1" --alpha "$2" --datapath "$datapath" --weights "$w" \
      ${extra[@]+"${extra[@]}"}
  done
done
