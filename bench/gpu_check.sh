#!/usr/bin/env bash
# One command for a lent GPU (about 8 minutes on one H100); the logic is bench/gpu_check.py.
#   bash bench/gpu_check.sh OUT [--realdata DIR]        # CUDA
#   bash bench/gpu_check.sh OUT --device cpu --tiny     # CPU end to end, small (make test-slow)
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_check.sh OUT [--device cpu|cuda] [--tiny] [--realdata DIR]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" bench/gpu_check.py "$@"
