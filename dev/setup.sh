#!/usr/bin/env bash
# Creates .venv (once) and installs ferry with its test extras. torch goes first, pinned, so that
# pip never resolves another torch (which would pull gigabytes of CUDA packages).
#
# FERRY_TORCH_PIP_ARGS: extra pip options for the torch install only, e.g. the CPU-only wheels:
#   FERRY_TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" bash dev/setup.sh
# Unset (the default, what CI uses), torch comes from the ordinary index.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
read -r -a torch_args <<< "${FERRY_TORCH_PIP_ARGS:-}"
.venv/bin/pip install --quiet --disable-pip-version-check ${torch_args[@]+"${torch_args[@]}"} torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -c dev/constraints.txt -e '.[test,megatron]'
