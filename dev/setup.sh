#!/usr/bin/env bash
# Creates .venv (once) and installs ferry with its test extras. torch goes first, pinned, so that
# pip never resolves another torch (which would pull gigabytes of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -c dev/constraints.txt -e '.[test,megatron]'
