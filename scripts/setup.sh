#!/usr/bin/env bash
# Set up on a fresh machine: a virtualenv in .venv, the gateway with the given extras, and the
# example model repository (a digits classifier trained with PyTorch, exported to ONNX).
# Usage: bash scripts/setup.sh [EXTRAS]   (default: examples)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-examples}
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# torch is pinned to 2.13.0 in pyproject.toml; on this machine pip takes its local CPU wheel.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
.venv/bin/python -m examples.digits --repository model-repository
