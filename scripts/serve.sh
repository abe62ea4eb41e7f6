#!/usr/bin/env bash
# README command 1: set everything up, then serve the example model repository.
# Extra arguments go to `gateway serve` (e.g. --host 0.0.0.0 --model-control-mode poll).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh examples
exec .venv/bin/gateway serve --model-repository model-repository "$@"
