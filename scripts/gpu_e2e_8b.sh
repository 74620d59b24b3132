#!/usr/bin/env bash
# Issue 13 first look: the 8b model with Llama-3 vocabulary at 128K on every GPU, with the
# chunked loss + tiled MLP, then without (--force past the planner). bash scripts/gpu_e2e_8b.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SEQPAR_LOG_DIR=/tmp/sl
i=0
for extra in "--loss-chunk 4096 --mlp-chunk 16384" "--force"; do
  i=$((i+1)); echo "=== run $i: $extra"
  timeout 230 python3 -m seqpar.cli train --model 8b --vocab-size 128256 --seq-len 131072 --batch-size 1 --steps 4 --warmup 1 --activation-checkpointing --log-every 1 --metrics $OUT/e2e_$i.jsonl $extra 2>&1 | grep -v "^\[W" | tail -12
  echo "rc=${PIPESTATUS[0]}"; tail -n 5 /tmp/sl/*/rank-0.log 2>/dev/null | tail -5; rm -rf /tmp/sl
done
