#!/usr/bin/env bash
# Issue 13, the longest sequence: one case per call (each fits in one 10-minute call).
#   CASE=plan     planner predictions (8b, V=128256) for 1/2/4/8 GPUs and its maxima (no GPU work)
#   CASE=128k|256k|512k   8b, 32 layers, V=128256 on 2xH200, --memory auto (the planner's
#                 choice), STEPS steps (default 4 / 3 / 1): step time, tokens/s/GPU, causal-MFU,
#                 peak GPU (allocated) and host memory against the planner's prediction
#   CASE=256k_plain  the same 256K run without tiling/offload (chunked loss + full AC only;
#                 --force past the planner): the cost of the memory options at 256K
#   CASE=cut1m    8b cut to 4 layers at 1,048,576 tokens on 2 GPUs, the options the 32-layer
#                 plan uses at that length (chunked loss, MLP tiles, every layer offloaded)
#   CASE=one      1 GPU: the planner on the whole 8b (host memory binds), then 8b cut to
#                 16 layers at 524,288 tokens under torchrun --nproc-per-node 1, --memory auto
#   CASE=torchcp  the PyTorch context_parallel + FSDP2 baseline at 128K (expected out of memory)
# JSON under $OUT/long_$CASE.json (scripts/long_summary.py); logs beside it.
# Run: CASE=128k bash scripts/gpu_long.sh   (2xH200 except CASE=one: 1xH200)
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SEQPAR_LOG_DIR=/tmp/sl_long
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
CASE=${CASE:-plan}
V=128256
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.device_count(), 'GPUs')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -2
grep MemTotal /proc/meminfo

host_sampler() {  # the largest used host memory (MemTotal - MemAvailable), bytes, into $1
  local peak=0 used
  while true; do
    used=$(awk '/MemTotal/{t=$2}/MemAvailable/{a=$2}END{printf "%.0f\n", (t-a)*1024}' /proc/meminfo)
    [ "$used" -gt "$peak" ] && peak=$used && echo "$peak" > "$1"
    sleep 1
  done
}

run_train() {  # NAME GPUS SEQ N_LAYERS STEPS OPTIONS(auto|loss,mlp,mode,k,opt) LIMIT_S [extra...]
  local name=$1 gpus=$2 seq=$3 layers=$4 steps=$5 opts=$6 limit=$7; shift 7
  python3 scripts/long_summary.py predict 8b $V "$seq" "$gpus" "$layers" "$opts" \
    "$OUT/plan_$name.json"
  local flags
  if [ "$opts" = auto ]; then
    flags="--memory auto"
  else
    IFS=, read -r loss mlp mode k opt <<< "$opts"
    flags="--loss-chunk $loss --mlp-chunk $mlp --activation-checkpointing $mode --force"
    [ "$k" != 0 ] && flags="$flags --offload-layers $k"
    [ "$opt" = 1 ] && flags="$flags --offload-optimizer"
  fi
  local launch="python3 -m seqpar.cli train --nproc $gpus"
  [ "$gpus" = 1 ] && launch="python3 -m torch.distributed.run --nproc-per-node 1 -m seqpar.cli train"
  host_sampler "$OUT/hostpeak_$name" & local sampler=$!
  echo "=== $name: $launch --model 8b --n-layers $layers --seq-len $seq $flags $*"
  timeout "$limit" $launch --model 8b --n-layers "$layers" --vocab-size $V --seq-len "$seq" \
    --batch-size 1 --steps "$steps" --warmup 1 --log-every 1 \
    --metrics "$OUT/metrics_$name.jsonl" $flags "$@" 2>&1 | grep -v "^\[W" \
    | tee "$OUT/log_$name.txt" | tail -15
  echo "rc=${PIPESTATUS[0]}"
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  tail -n 8 /tmp/sl_long/*/rank-0.log 2>/dev/null | tail -8; rm -rf /tmp/sl_long
  python3 scripts/long_summary.py "$name" "$OUT/log_$name.txt" "$OUT/metrics_$name.jsonl" \
    "$OUT/hostpeak_$name" "$OUT/plan_$name.json" "$OUT/long_$name.json"
}

case "$CASE" in
  plan)
    for g in 1 2 4 8; do
      host=$((g * 128)); [ $g = 2 ] && host=256; [ $g = 8 ] && host=560
      for L in 131072 262144 524288 1048576; do
        python3 -m seqpar.cli plan --model 8b --vocab-size $V --seq-len $L --gpus $g \
          --gpu-memory-gib 139 --host-memory-gib $host --json > "$OUT/plan_${g}gpu_$L.json" \
          && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($g, $L, d['fits'], d['peak_gpu_gib'], d['peak_host_gib'], d['config'], 'max', d['max_seq_len'], d['max_seq_len_bound'])" "$OUT/plan_${g}gpu_$L.json"
      done
    done
    python3 scripts/plot_max_length.py "$OUT/max_length_vs_gpus.png" || true ;;
  128k) run_train 128k 2 131072 32 "${STEPS:-4}" auto 560 ;;
  256k) run_train 256k 2 262144 32 "${STEPS:-3}" auto 570 ;;
  256k_plain) run_train 256k_plain 2 262144 32 "${STEPS:-3}" 2048,0,full,0,0 570 ;;
  512k) run_train 512k 2 524288 32 "${STEPS:-1}" auto 540 ;;  # one step: ~5 min expected
  cut1m) run_train cut1m 2 1048576 4 "${STEPS:-2}" 2048,8192,offload,4,0 540 ;;
  one)
    python3 -m seqpar.cli plan --model 8b --vocab-size $V --seq-len 524288 --gpus 1 \
      --gpu-memory-gib 139 --host-memory-gib 128 | tee "$OUT/plan_one_8b_full.txt"
    run_train one16 1 "${SEQ:-524288}" 16 "${STEPS:-1}" auto 540 ;;
  torchcp)
    LENS=131072 OUT=$OUT timeout 400 python3 -m torch.distributed.run --nproc-per-node 2 \
      scripts/reference/e2e_torch_cp_llama8b.py 2>&1 | grep -v "^\[W" | tail -12
    echo "rc=${PIPESTATUS[0]}"; ls "$OUT" ;;
  *) echo "unknown CASE=$CASE"; exit 2 ;;
esac
