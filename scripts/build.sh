#!/usr/bin/env bash
# Create .venv if it is missing and install nano2 into it (editable, with the test tools and NVRTC).
# --if-needed: only when it was never built here or pyproject.toml changed since.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--if-needed" ] && [ -f .venv/.nano2-built ] && [ ! pyproject.toml -nt .venv/.nano2-built ]; then
    exit 0
fi
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,nvrtc]"
# The stamp lets test.sh and run_local.sh skip this step until pyproject.toml changes.
touch .venv/.nano2-built
echo "nano2 installed in $(pwd)/.venv"
