#!/usr/bin/env bash
# One GPU call that exercises what CPU tests cannot: NCCL parity (tests/test_gpu.py),
# the CUDA block kernels and their selector (scripts/gpu_kernels.py), seqpar.hf in bf16
# (tests/test_hf_gpu.py), the memory options' measured peaks beside the planner
# (seqpar.memory.calibrate) and a short `seqpar train` on every GPU. Results in "$OUT".
#
#   bash scripts/gpu_smoke.sh            # from the repo root on a GPU host
set -u -o pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export SEQPAR_LOG_DIR=${SEQPAR_LOG_DIR:-/tmp/seqpar-logs}
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
NPROC=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
status=0
step() {  # step NAME TIMEOUT CMD...: run, log to $OUT/NAME.log, remember failures
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"; tail -n 12 "$OUT/$name.log"
  [ "$rc" -ne 0 ] && status=1
}
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers",
transformers.__version__, torch.cuda.get_device_name(0), "x", torch.cuda.device_count())'
step test_gpu 240 "$PY" tests/test_gpu.py
step kernels 120 "$PY" scripts/gpu_kernels.py "$OUT/kernels.json"
step hf_gpu 180 "$PY" tests/test_hf_gpu.py
step calibrate 150 "$PY" -m seqpar.memory.calibrate --model 8b --layers 2 \
  --vocab-size 128256 --lens "${CALIBRATE_LENS:-16384,65536}" --out "$OUT/calibrate.json"
step train 150 "$PY" -m seqpar.cli train --model 1b --seq-len 65536 --batch-size 1 --steps 4 \
  --warmup 1 --activation-checkpointing --log-every 1
[ "$status" -ne 0 ] && tail -n 40 "$SEQPAR_LOG_DIR"/*/rank-*.log 2>/dev/null
exit $status
