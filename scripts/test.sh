#!/usr/bin/env bash
# Sets up (if needed), checks lint, format and types, then runs the whole test suite; the tests start their own
# PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
