#!/usr/bin/env bash
# Sets up (if needed) and runs the main job: the embedded service compresses the bundled sample model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/squeezer demo "$@"
