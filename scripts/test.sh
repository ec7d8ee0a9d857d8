#!/usr/bin/env bash
# Sets up (if needed), checks lint, format and types, then runs the whole test suite on one pytest-xdist worker per
# core, at most 2 (each starts its own PostgreSQL, Redis and S3 server; a job's engine uses one thread); extra
# arguments go to pytest. The 25 slowest tests are listed at the end, so the suite's cost stays in view.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest --numprocesses=auto --maxprocesses=2 --durations=25 "$@"
