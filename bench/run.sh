#!/usr/bin/env bash
# The serving benchmark in one command: set up the gateway, install wrk and h2load (Debian's wrk and
# nghttp2-client) if they are missing, then run bench/serving.py (its arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v wrk >/dev/null 2>&1 || ! command -v h2load >/dev/null 2>&1; then
    apt_get=(env DEBIAN_FRONTEND=noninteractive apt-get)
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
        apt_get=(sudo "${apt_get[@]}")
    fi
    if ! "${apt_get[@]}" install -y --no-install-recommends wrk nghttp2-client; then
        "${apt_get[@]}" update
        "${apt_get[@]}" install -y --no-install-recommends wrk nghttp2-client
    fi
fi
exec .venv/bin/python bench/serving.py "$@"
