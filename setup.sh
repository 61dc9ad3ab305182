#!/usr/bin/env bash
# Sets up .venv with everything the demo and the tests need. Idempotent: a second run only checks.
# torch is pinned to the CPU build here (an unpinned torch pulls a multi-GB CUDA build); install_requires
# itself keeps a range.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"
