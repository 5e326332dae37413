#!/usr/bin/env bash
# Create .venv at the project root and install mlwarden with its test and peer dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=".venv/bin/pip"

# torch first and pinned: any other spec pulls a CUDA build of several gigabytes.
"$pip" install --quiet "torch==2.13.0"
# The dask extra is optional for users; the test suite covers --engine dask, so CI installs it.
"$pip" install --quiet -e ".[dev,dask]"

# The peers for cross-check tests pin other torch versions in their metadata, so they go in
# without their dependencies; the few they need at import time are listed in the bench extra.
"$pip" install --quiet --no-deps -r scripts/peers.txt
"$pip" install --quiet -e ".[bench]"
