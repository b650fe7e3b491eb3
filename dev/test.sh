#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
.venv/bin/python -m pytest "$@"
