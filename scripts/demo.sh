#!/usr/bin/env bash
# The README's main command: set up .venv, then run `seqpar demo` (4 CPU processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/seqpar demo "$@"
