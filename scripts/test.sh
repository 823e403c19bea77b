#!/usr/bin/env bash
# Install everything the tests need (Python packages, Debian's Chromium for the browser test),
# then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,ray
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
. .venv/bin/activate
ruff check .
python -m pytest -q "$@"
