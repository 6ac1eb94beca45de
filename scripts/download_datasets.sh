#!/usr/bin/env bash
# Fetch PF-PASCAL, PF-WILLOW and SPair-71k into the HPF/SCOT layout (see ../shared/reference/datasets.md).
#   bash scripts/download_datasets.sh [--only pfpascal|pfwillow|spair]... [--root Datasets_SCOT] [--dry-run]
# Google Drive tarballs first (gdown when installed), then the official archives. ImageNet: printed help only.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m data.download datasets "$@"
