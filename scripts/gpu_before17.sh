#!/usr/bin/env bash
# Issue 17 "before": the PyTorch CP + FSDP2 baseline and seqpar's 8b (vocab 128,256) at 64K
# with full and selective activation checkpointing, and 128K selective, in one call on 2 GPUs.
# bash scripts/gpu_before17.sh   (writes under $OUT)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SEQPAR_LOG_DIR=/tmp/sl
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/env.txt"
python3 -c "import torch;print(torch.__version__, torch.version.cuda)" >> "$OUT/env.txt"
echo "=== torch CP baseline 64K"
LENS=65536 OUT=$OUT timeout 150 python3 -m torch.distributed.run --nproc-per-node 2 \
  scripts/reference/e2e_torch_cp_llama8b.py 2>&1 | grep -v "^\[W\|^W1\|warn" | tail -6
run() {  # name seq ac
  echo "=== seqpar $1"
  timeout "$4" python3 -m seqpar.cli train --model 8b --vocab-size 128256 --seq-len "$2" \
    --batch-size 1 --steps 4 --warmup 1 --activation-checkpointing "$3" --loss-chunk 4096 \
    --mlp-chunk 16384 --log-every 1 --metrics "$OUT/$1.jsonl" 2>&1 | grep -v "^\[W" | tail -8
  echo "rc=${PIPESTATUS[0]}"; tail -n 3 /tmp/sl/*/rank-0.log 2>/dev/null; rm -rf /tmp/sl
}
run 64k_full 65536 full 140
run 64k_selective 65536 selective 140
run 128k_selective 131072 selective 200
