#!/usr/bin/env bash
# Issue 17: end-to-end training speed in ONE call (<= 10 min): seqpar's default (the planner's
# checkpointing: selective where it fits), --compile, each optimisation off in turn, and the
# PyTorch CP + FSDP2 baseline, at 64K and 128K; tokens/s/GPU, causal-MFU, peak memory, and the
# --profile-step split before (full AC, eager) and after (default + --compile).
#   bash scripts/gpu_speed.sh            # 2x H200: 8b, vocabulary 128,256, + the baseline at 64K
#   GPUS=1 bash scripts/gpu_speed.sh     # 1x H200: 1b (8b does not fit one GPU), no baseline
# BUDGET_S (default 540): no run starts that its estimate would take past it; the ones left are
# named at the end, and RUNS="name ..." runs only those (a second call). Writes under $OUT:
# one .log and .jsonl per run, speed.json (all runs) and speed.md (the table for BENCHMARKS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SEQPAR_LOG_DIR=/tmp/sl
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
GPUS=${GPUS:-2}; BUDGET_S=${BUDGET_S:-540}; START=$(date +%s)
MODEL=8b; [ "$GPUS" = 1 ] && MODEL=1b
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/env.txt"
python3 -c "import torch;print(torch.__version__, torch.version.cuda)" >> "$OUT/env.txt"
echo "gpus=$GPUS model=$MODEL budget=${BUDGET_S}s" | tee -a "$OUT/env.txt"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
run() {  # name estimate_s timeout_s [env=value ...] -- seqpar train options
  local name=$1 est=$2 lim=$3; shift 3
  local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  if [ -n "$RUNS" ] && [[ " $RUNS " != *" $name "* ]]; then return; fi
  if [ "$(left)" -lt "$est" ]; then echo "=== $name: skipped ($(left) s left < ~$est s)"; \
    echo "{\"name\": \"$name\", \"skipped\": true}" > "$OUT/$name.skip"; return; fi
  local t=$(( $(left) + 50 < lim ? $(left) + 50 : lim ))
  echo "=== $name (limit ${t}s): $*"
  env "${envs[@]}" timeout "$t" python3 -m seqpar.cli train --model "$MODEL" --vocab-size 128256 \
    --batch-size 1 --warmup 1 --log-every 1 --nproc "$GPUS" --metrics "$OUT/$name.jsonl" "$@" \
    > "$OUT/$name.log" 2>&1
  echo "rc=$?" >> "$OUT/$name.log"; grep -v "^\[W" "$OUT/$name.log" | grep -E \
    "memory:|checkpointing:|summary|profile|error|rc=" | tail -6
  cat /tmp/sl/*/rank-0.log > "$OUT/$name.rank0.txt" 2>/dev/null
  grep -h -A1 "synchronizing CUDA operation" "$OUT/$name.log" "$OUT/$name.rank0.txt" \
    | head -8  # SEQPAR_SYNC_DEBUG=warn: a device sync inside a step
  tail -n 5 "$OUT/$name.rank0.txt" 2>/dev/null | tail -5; rm -rf /tmp/sl
}
L64=(--seq-len 65536 --loss-chunk 4096)
L128=(--seq-len 131072 --loss-chunk 4096 --mlp-chunk 16384)
# order: the most informative first, so a short budget still answers the main question
run s64_default 70 150 SEQPAR_SYNC_DEBUG=warn -- "${L64[@]}" --steps 3 --profile-step 3
run s64_compile 100 200 -- "${L64[@]}" --steps 3 --profile-step 3 --compile
run s128_default 100 200 -- "${L128[@]}" --steps 3
run s128_compile 130 230 -- "${L128[@]}" --steps 3 --compile
if [ "$GPUS" -ge 2 ] && { [ -z "$RUNS" ] || [[ " $RUNS " == *" baseline64 "* ]]; }; then
  if [ "$(left)" -ge 100 ]; then
    echo "=== baseline64 (PyTorch CP + FSDP2, full AC)"
    LENS=65536 OUT=$OUT timeout 150 python3 -m torch.distributed.run --nproc-per-node "$GPUS" \
      scripts/reference/e2e_torch_cp_llama8b.py > "$OUT/baseline64.txt" 2>&1
    grep -v "^\[W\|^W1\|warn" "$OUT/baseline64.txt" | tail -3
  else
    echo "=== baseline64: skipped ($(left) s left)"; echo '{}' > "$OUT/baseline64.skip"
  fi
fi
run s64_full_ac 70 150 -- "${L64[@]}" --steps 3 --profile-step 3 --activation-checkpointing full
run s64_unfused_adamw 65 150 SEQPAR_FUSED_ADAMW=0 -- "${L64[@]}" --steps 3
run s128_compile_full_ac 130 230 -- "${L128[@]}" --steps 3 --compile --activation-checkpointing full
python3 scripts/gpu_speed_summary.py "$OUT" "$MODEL" "$GPUS" | tee "$OUT/speed.md"
echo "total $(( $(date +%s) - START )) s"
