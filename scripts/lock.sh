#!/usr/bin/env bash
# Writes the lock files from pyproject.toml: requirements/dev.lock (what scripts/setup.sh and CI install) and
# requirements/service.lock (what the Dockerfile installs). Pins already in a lock file are kept; pass --upgrade to
# move them to the newest releases the ranges allow.
set -euo pipefail
cd "$(dirname "$0")/.."
compile() { .venv/bin/uv pip compile pyproject.toml --python-version 3.11 --find-links /opt/wheels --no-header --annotation-style line "$@"; }
compile --extra dev --extra bench -o requirements/dev.lock "${@}"
compile --extra service --constraint requirements/dev.lock -o requirements/service.lock "${@}"
