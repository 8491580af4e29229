#!/usr/bin/env bash
# Install probelink into ./.venv and serve it with embedded defaults
# (SQLite and the archive under ./var, in-process Socket.IO). Arguments go to `probelink serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
ensure_venv ""
exec .venv/bin/probelink serve --print-link "$@"
