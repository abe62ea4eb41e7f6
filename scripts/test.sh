#!/usr/bin/env bash
# README command 2: set everything up, then run the tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev

# tests/test_metrics.py runs a real Prometheus against the gateway: Debian's package provides it,
# installed on the machine with apt-get (sudo when not root) if the prometheus command is missing.
if ! command -v prometheus >/dev/null 2>&1; then
    echo "[test] installing Debian's prometheus package with apt-get, for tests/test_metrics.py"
    apt_get=(env DEBIAN_FRONTEND=noninteractive apt-get)
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
        apt_get=(sudo "${apt_get[@]}")
    fi
    if ! "${apt_get[@]}" install -y --no-install-recommends prometheus; then
        "${apt_get[@]}" update
        "${apt_get[@]}" install -y --no-install-recommends prometheus
    fi
fi

echo "[test] running the tests (about 9 to 10 minutes on 2 cores)"
exec .venv/bin/python -m pytest "$@"
