#!/usr/bin/env bash
# Set up .venv, then: make a tiny random Llama, convert it to TensorRT-LLM tp=2, verify it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
.venv/bin/ferry demo ferry-demo
