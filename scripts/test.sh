#!/usr/bin/env bash
# Install what the tests need, then run them.
#   bash scripts/test.sh          everything (CI): ruff, then every test, browser and Ray included
#   bash scripts/test.sh --fast   the inner loop: no browser, no Ray cluster, no embedding model,
#                                 no subprocess-heavy reliability or app tests (about a minute)
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
if [ "$fast" = 1 ]; then
  bash scripts/install.sh test
else
  bash scripts/install.sh test,ray
  if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
. .venv/bin/activate
ruff check .
# two workers (pytest-xdist), each test file on one of them so its fixtures are built once:
# most tests spend their time in one-threaded subprocesses, so two cores finish in about 60%
# of the serial time (BENCHMARKS.md, "Test suite")
workers=(-n 2 --dist loadfile)
if [ "$fast" = 1 ]; then
  ICP_FAST_TIER=1 python -m pytest -q "${workers[@]}" \
    -m "not slow and not e2e and not ray and not model" "$@"
else
  python -m pytest -q "${workers[@]}" "$@"
fi
