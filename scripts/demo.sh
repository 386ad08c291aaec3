#!/usr/bin/env bash
# Set up (once) and run the end-to-end demo. Extra arguments go to `egovlp demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
egovlp demo "$@"
