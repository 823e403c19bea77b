#!/usr/bin/env bash
# Create .venv (if missing) and install the project. Usage: bash scripts/install.sh [extras]
# torch is pinned to the CPU build first: a plain `torch` requirement would pull a multi-GB CUDA
# build. On a GPU machine, install the CUDA torch you want before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
if [ -n "$extras" ]; then
  python -m pip install --quiet -e ".[$extras]"
else
  python -m pip install --quiet -e .
fi
