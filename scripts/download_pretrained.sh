#!/usr/bin/env bash
# Fetch the ImageNet MoCo checkpoint of the paper's initialisation into pretrained_models/ (the authors' moco.pth.tar,
# else the public MoCo v1 200-epoch model); pretrained_models/fetched.yaml records which file was used.
#   bash scripts/download_pretrained.sh [--target moco] [--out pretrained_models] [--dry-run]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m data.download pretrained "$@"
