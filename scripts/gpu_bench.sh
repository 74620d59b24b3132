#!/usr/bin/env bash
# One GPU call = GPU parity tests + `seqpar bench attention` on every GPU of the machine,
# all results in "$OUT". Made for the 4x H200 machine and a 10-minute call: the whole
# script plans for TOTAL_S seconds (default 500) and the benchmark stops starting variants
# that would not fit (recorded as skipped in the JSON), so results always come back.
#
#   bash scripts/gpu_bench.sh                       # from the repo root, no install needed
#   NPROC=2 SEQ_LENS=32K,128K bash scripts/gpu_bench.sh
#
# Knobs (environment): OUT, NPROC, SEQ_LENS, KV_HEADS, PAIRS, TOTAL_S, MAX_VARIANT_S,
# SKIP_TESTS=1, TAG (file-name suffix, default p$NPROC), EXTRA (more `seqpar bench attention`
# options, e.g. --profile).
set -u -o pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

# NVLink SHARP / multicast off: see KINDS.md of the machines (multicast objects are not
# available there and NCCL would fail or fall back unpredictably).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
NPROC=${NPROC:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}
SEQ_LENS=${SEQ_LENS:-32K,128K,512K}
KV_HEADS=${KV_HEADS:-32,8}
PAIRS=${PAIRS:-ring/zigzag,ulysses/contiguous,allgather/zigzag,hybrid/zigzag}
TOTAL_S=${TOTAL_S:-500}
MAX_VARIANT_S=${MAX_VARIANT_S:-6}
TAG=${TAG:-p$NPROC}
status=0

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(hostname)"
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpus", torch.cuda.device_count(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")'
  nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm,power.limit --format=csv
  nvidia-smi topo -m
  git rev-parse HEAD 2>/dev/null || echo "no git"
} > "$OUT/env_$TAG.txt" 2>&1
cat "$OUT/env_$TAG.txt" | head -8

# 1) parity on NCCL: bf16, every strategy x layout x mask vs float64 dense (+ a bench smoke run)
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  if "$PY" -c 'import pytest' 2>/dev/null; then
    timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 \
      | tee "$OUT/test_gpu_$TAG.log" | tail -25
  else
    timeout 240 "$PY" tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu_$TAG.log" | tail -25
  fi
  rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && { echo "GPU TESTS FAILED (rc=$rc): see $OUT/test_gpu_$TAG.log"; status=1; }
fi

# 2) the benchmark: whatever time is left, minus a margin for start-up and the report
left=$(( TOTAL_S - (SECONDS - start) - 40 ))
[ "$left" -lt 90 ] && left=90
minutes=$("$PY" -c "print(round(max(1.0, ($left - 30) / 60), 2))")
if command -v torchrun >/dev/null; then LAUNCH=(torchrun); else LAUNCH=("$PY" -m torch.distributed.run); fi
ARGS=(bench attention --seq-lens "$SEQ_LENS" --heads 32 --kv-heads "$KV_HEADS" --head-dim 128
      --dtype bf16 --causal --pairs "$PAIRS" --warmup 1 --iters 5
      --max-variant-seconds "$MAX_VARIANT_S" --max-minutes "$minutes"
      --out "$OUT/bench_attention_$TAG.json" --plot "$OUT/bench_attention_$TAG.png" ${EXTRA:-})
export SEQPAR_BENCH_COMMAND="${LAUNCH[*]} --nproc-per-node=$NPROC -m seqpar.cli ${ARGS[*]}"
echo "$SEQPAR_BENCH_COMMAND"
timeout $(( left + 30 )) "${LAUNCH[@]}" --standalone --nproc-per-node="$NPROC" \
  -m seqpar.cli "${ARGS[@]}" 2>&1 | tee "$OUT/bench_attention_$TAG.log" | grep -v '^\[W'
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && { echo "BENCH rc=$rc (partial results are still in the JSON)"; status=1; }

# 3) tables for BENCHMARKS.md (and the plot again, in case the run was cut short)
if [ -f "$OUT/bench_attention_$TAG.json" ]; then
  "$PY" -m seqpar.cli bench report "$OUT/bench_attention_$TAG.json" --markdown \
    --plot "$OUT/bench_attention_$TAG.png" > "$OUT/bench_attention_$TAG.md" 2>&1 || status=1
fi
echo "done in $(( SECONDS - start )) s, status $status; files:"
ls -la "$OUT"
exit $status
