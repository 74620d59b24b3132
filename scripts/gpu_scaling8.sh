#!/usr/bin/env bash
# Issue 6 on an 8-GPU host (nvidia-h200-x8), in two device calls of < 10 minutes each:
#
#   PART=attention OUT=$PWD/out bash scripts/gpu_scaling8.sh   # bench: 64K, 256K, 1M
#   PART=train     OUT=$PWD/out bash scripts/gpu_scaling8.sh   # 1b model, longest L that fits
#
# PART=attention: `seqpar bench attention` on all 8 GPUs, Hq=32, Hkv in {32, 8}, causal
# bf16: ring (zigzag), ulysses, allgather, hybrid 2x4 and 4x2, PyTorch context_parallel
# (cuDNN, both rotations), the 1-GPU ceiling; GPU parity tests first.
# PART=train: `seqpar train --model 1b` with ring zigzag and hybrid, trying the sequence
# lengths in TRAIN_LENS (longest first) until one runs STEPS steps; an OOM moves on to
# the next length. Then `seqpar bench report --scaling` over every bench JSON it finds.
# MODEL, DTYPE, TRAIN_LENS, STEPS, TRAIN_TIMEOUT_S, HYBRID_U, SEQ_LENS, TOTAL_S: knobs.
# Tried on CPU with 8 gloo processes at tiny sizes (MODEL=tiny); not yet run on 8 GPUs.
set -u -o pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
NPROC=${NPROC:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}
PART=${PART:-attention}
status=0

case "$PART" in
attention)
  NPROC=$NPROC TAG=p$NPROC TOTAL_S=${TOTAL_S:-520} SEQ_LENS=${SEQ_LENS:-64K,256K,1M} \
    MAX_VARIANT_S=${MAX_VARIANT_S:-8} \
    EXTRA="--hybrid-ulysses ${HYBRID_U:-2,4} --peer-backends cudnn --ceiling-backends cudnn ${EXTRA:-}" \
    bash scripts/gpu_bench.sh || status=1
  ;;
train)
  STEPS=${STEPS:-3}
  for strategy in ring hybrid; do
    for len in ${TRAIN_LENS:-1048576 524288 262144}; do
      log="$OUT/train_1b_${strategy}_$len.log"
      echo "== ${MODEL:-1b}, $strategy, L=$len on $NPROC ranks"
      timeout "${TRAIN_TIMEOUT_S:-240}" "$PY" -m torch.distributed.run --standalone \
        --nproc-per-node="$NPROC" -m seqpar.cli train --model "${MODEL:-1b}" --seq-len "$len" \
        --batch-size 1 --steps "$STEPS" --log-every 1 --activation-checkpointing \
        --strategy "$strategy" --layout zigzag --dtype "${DTYPE:-bf16}" \
        --metrics "$OUT/train_1b_${strategy}_$len.jsonl" > "$log" 2>&1
      rc=$?
      grep -E "step [0-9]+/|summary|Error" "$log" | grep -v '^\[W' | tail -4
      [ "$rc" -eq 0 ] && break  # the longest length that ran; next strategy
      echo "   L=$len did not finish (rc=$rc): trying a shorter one"
    done
  done
  ;;
*)
  echo "PART must be attention or train" >&2
  exit 2
  ;;
esac

files=$(ls "$OUT"/bench_attention_p*.json 2>/dev/null)
if [ -n "$files" ]; then
  # shellcheck disable=SC2086
  "$PY" -m seqpar.cli bench report --scaling --markdown $files > "$OUT/scaling.md" || status=1
fi
exit $status
