#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite; the tests start their own PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
