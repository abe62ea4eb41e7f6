#!/usr/bin/env bash
# Set up on a fresh machine: a virtualenv in .venv, the gateway with the given extras, and the
# example model repository (a digits classifier trained with PyTorch, exported to ONNX).
# Usage: bash scripts/setup.sh [EXTRAS]   (default: examples; comma-separated, e.g. examples,tensorflow)
# Prints a line per step with the seconds elapsed, and pip's own lines while it installs (the first
# run downloads PyTorch and the other wheels: a few minutes). Later runs with the same extras skip
# pip while pyproject.toml is unchanged (delete .venv/.model-gateway-installed-* to force it).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-examples}
started=$SECONDS
step() { printf '[setup %4ds] %s\n' "$((SECONDS - started))" "$*"; }

if [ ! -x .venv/bin/python ]; then
    step "creating the virtualenv .venv with ${PYTHON:-python3}"
    "${PYTHON:-python3}" -m venv .venv
fi

# One stamp per set of extras, holding the pyproject.toml it was installed from.
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
stamp=".venv/.model-gateway-installed-${extras//,/+}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    step "model-gateway[${extras}] is installed and pyproject.toml has not changed: pip skipped"
else
    if .venv/bin/python -m pip show --quiet tensorflow-cpu >/dev/null 2>&1; then
        # The tensorflow extra installs `tensorflow` since tensorflow-serving-api (dev) needs it by that
        # name; `tensorflow-cpu`, which earlier set-ups installed, holds the same files: both go first,
        # so that one distribution owns them.
        step "replacing tensorflow-cpu with tensorflow"
        .venv/bin/python -m pip uninstall --disable-pip-version-check -y tensorflow-cpu tensorflow
    fi
    step "installing model-gateway[${extras}] into .venv with pip (torch is pinned to 2.13.0)"
    # pip's lines as they come (Collecting, Downloading, Installing), without the long list of what is
    # already there.
    PYTHONUNBUFFERED=1 .venv/bin/python -m pip install --disable-pip-version-check -e ".[${extras}]" \
        | { grep -v --line-buffered '^Requirement already satisfied' || true; }
    echo "$wanted" > "$stamp"
    step "installed model-gateway[${extras}]"
fi

if [ -f model-repository/digits/1/model.onnx ]; then
    step "the example model repository is there: model-repository/digits"
else
    step "building the example model repository: training the digits classifier (about a minute)"
    .venv/bin/python -m examples.digits --repository model-repository
fi
step "set up"
