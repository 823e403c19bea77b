#!/usr/bin/env bash
# Install, prepare the bundled sample (its workspace and map, built once into the app's cache,
# with numba's compiled kernels cached), then open the app on it (http://localhost:8501).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
python -m icp_core.sample --prepare
exec icp app "$@"
