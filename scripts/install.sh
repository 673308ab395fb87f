#!/usr/bin/env bash
# Create .venv (if missing) and install everything grpose needs, MMPose included. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q -e . --no-deps --no-build-isolation
PYTHON=.venv/bin/python bash scripts/install_mmpose.sh
