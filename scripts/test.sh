#!/usr/bin/env bash
# The README's test command: set up .venv, then run the CPU test suite (gloo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
