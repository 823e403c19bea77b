#!/usr/bin/env bash
# Install, then open the app on the bundled sample (http://localhost:8501).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
exec icp app "$@"
