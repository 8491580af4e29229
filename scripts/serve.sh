#!/usr/bin/env bash
# Install probelink into ./.venv and serve it with embedded defaults
# (SQLite and the archive under ./var, in-process Socket.IO). Arguments go to `probelink serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
# tesseract's English model: the text check under the masks reads every capture with it;
# DejaVu: the report PDF's font (any script the expert types).
apt_install tesseract-ocr-eng fonts-dejavu-core
ensure_venv ""
exec .venv/bin/probelink serve --print-link "$@"
