#!/usr/bin/env bash
# Create .venv and install seqpar into it. Torch comes from the pinned CPU build
# (torch==2.13.0) when it is missing, never as an open range that would pull CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==${SEQPAR_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q --no-deps -e .
for pkg in numpy pytest; do
  .venv/bin/python -c "import $pkg" 2>/dev/null || .venv/bin/python -m pip install -q "$pkg"
done
# the `hf` extra (seqpar.hf and its tests); pure-Python wheels, never torch
.venv/bin/python -c "import transformers, safetensors, tokenizers" 2>/dev/null \
  || .venv/bin/python -m pip install -q "transformers>=4.56,<6" "safetensors>=0.4.3" "tokenizers>=0.21"
# the optional `plot` extra (PNG plots of the benchmarks): only when asked, SEQPAR_PLOT=1
if [ "${SEQPAR_PLOT:-0}" = 1 ]; then
  .venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/python -m pip install -q "matplotlib>=3.7"
fi
