#!/usr/bin/env bash
# Installs everything Squeezer needs on a fresh Debian machine: system packages, then a virtualenv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
command -v chromium >/dev/null || need_apt+=(chromium)  # report.html is checked in a real headless browser
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v bwrap >/dev/null || need_apt+=(bubblewrap)  # the jail every job's engine runs in (core/jail.py)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The unprivileged uid jailed engines run as when the worker or the API runs as root.
if ! id squeezer-job >/dev/null 2>&1; then
  echo "setup: creating the system user squeezer-job"
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin squeezer-job
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.squeezer-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/dev.lock -nt "$stamp" ]; then
  echo "setup: installing Python packages from requirements/dev.lock (torch takes a minute or two)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements/dev.lock
  .venv/bin/pip install -q --no-deps -e .
  touch "$stamp"
fi
