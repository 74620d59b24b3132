#!/usr/bin/env bash
# A/B timing of `seqpar bench attention` for two code trees in one GPU call: the tree
# in OLD (a folder holding an older seqpar/, e.g. `git archive REV seqpar | tar -x -C .old`)
# and this checkout, alternated ROUNDS times so drift hits both alike. Results in "$OUT".
#
#   OLD=.old ROUNDS=2 SEQ_LENS=32K,128K MAX_MINUTES=1.6 bash scripts/gpu_ab.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
OLD=${OLD:?OLD must name a folder with the older seqpar/ package}
NPROC=${NPROC:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}
SEQ_LENS=${SEQ_LENS:-32K,128K}
ROUNDS=${ROUNDS:-2}
PAIRS=${PAIRS:-ring/zigzag,ulysses/contiguous,allgather/zigzag,hybrid/zigzag}
status=0
"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' \
  | tee "$OUT/env_ab.txt"
for round in $(seq 1 "$ROUNDS"); do
  for side in old new; do
    tree=$PWD; [ "$side" = old ] && tree=$(cd "$OLD" && pwd)
    tag=${side}_r$round
    PYTHONPATH=$tree timeout 300 "$PY" -m torch.distributed.run --standalone \
      --nproc-per-node="$NPROC" -m seqpar.cli bench attention --seq-lens "$SEQ_LENS" \
      --heads 32 --kv-heads 32,8 --head-dim 128 --dtype bf16 --causal --pairs "$PAIRS" \
      --warmup 1 --iters 5 --max-variant-seconds 6 --max-minutes "${MAX_MINUTES:-2}" \
      --peer-backends cudnn \
      --ceiling-backends cudnn --check-max-len 131072 --out "$OUT/ab_$tag.json" \
      >> "$OUT/ab.log" 2>&1 || { echo "$tag failed"; tail -20 "$OUT/ab.log"; status=1; }
    echo "$tag done at $SECONDS s"
  done
done
exit $status
