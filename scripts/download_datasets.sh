#!/usr/bin/env bash
# Fetch PF-PASCAL, PF-WILLOW and SPair-71k into the HPF/SCOT layout (README: Data).
#   bash scripts/download_datasets.sh [--only pfpascal|pfwillow|spair]... [--root Datasets_SCOT] [--dry-run]
# Google Drive tarballs first (gdown when installed), then the official archives. ImageNet: printed help only.
# Transfers must match Content-Length; archives are size- and member-capped, links refused (docs/robustness.md).
# One failed benchmark does not stop the others; the exit status is 1 if any failed.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m data.download datasets "$@"
