#!/usr/bin/env bash
# Set up .venv, then run `seqpar train` (CPU: 4 gloo processes, sp=4, ring, zigzag,
# tiny model on the synthetic passkey task; GPU host: every visible GPU over NCCL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/seqpar train "$@"
