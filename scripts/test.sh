#!/usr/bin/env bash
# Build the environment if needed, then run the whole test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh --if-needed
# The parity tests compare with an independent PyTorch model. They need torch's CPU build
# (2.13.0 lies on this project's machines; elsewhere pip fetches it); NANO2_NO_TORCH=1 skips it.
if [ "${NANO2_NO_TORCH:-0}" != 1 ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "installing torch for the parity tests"
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
exec .venv/bin/python -m pytest "$@"
