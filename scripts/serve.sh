#!/usr/bin/env bash
# README command 1: set everything up, then serve the example model repository.
# Usage: bash scripts/serve.sh [--extras EXTRAS] [gateway serve options]
#   --extras tensorflow | jax | all (comma-separated): also install those extras first, to push
#   Keras/TensorFlow or JAX models (and serve SavedModels); PyTorch comes with the example.
# Other arguments go to `gateway serve` (e.g. --host 0.0.0.0 --model-control-mode poll).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=examples
case "${1:-}" in
    --extras)
        [ $# -ge 2 ] || { echo "error: --extras needs a value: tensorflow, jax or all" >&2; exit 2; }
        extras="examples,$2"
        shift 2
        ;;
    --extras=*)
        extras="examples,${1#--extras=}"
        shift
        ;;
esac
bash scripts/setup.sh "$extras"
exec .venv/bin/gateway serve --model-repository model-repository "$@"
