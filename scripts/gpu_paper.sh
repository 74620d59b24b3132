#!/usr/bin/env bash
# Issue 16, `seqpar bench paper` on every GPU of the machine, one call of <= 10 minutes:
# the paper's experiments 1-3 (max batch at L=512, max length at B=64, weak scaling) for
# bert-base and bert-large, SP (rsa, ring) vs Megatron TP (tp, tp-sp), with each GPU capped
# at 16 GiB to stand for the paper's 16 GB P100. P = 1 on one H200, P = 1, 2 on two.
#
#   OUT=/tmp/o bash scripts/gpu_paper.sh          # from the repo root
#
# Each model gets its own invocation and a fixed share of the time (MINUTES each), so a
# slow model cannot starve the other; each search stops after SEARCH_S seconds or
# MAX_TRIALS trials (its maximum is then printed as "≥N", a lower bound). Writes under
# $OUT: paper_<model>_p<N>/{paper.json,paper.txt,paper_<model>.png} and a log per model.
# Knobs: MODELS, METHODS, MINUTES, SEARCH_S, MAX_TRIALS, EXPERIMENTS, CAP_GIB (none: no
# cap), EXTRA (more options). Experiment 4 (Linformer under SP, once the linformer branch
# is merged) as its own call, uncapped, lengths from 128K doubling (issue 16: >= 1M tokens):
#   MODELS=bert-base EXPERIMENTS=4 CAP_GIB=none MINUTES=8 SEARCH_S=400 \
#     EXTRA="--batch-len 131072" bash scripts/gpu_paper.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
NPROC=${NPROC:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}
MODELS=${MODELS:-bert-base bert-large}
METHODS=${METHODS:-rsa,ring,tp,tp-sp}
MINUTES=${MINUTES:-3.8}          # per model; two models + start-up stay under 10 minutes
SEARCH_S=${SEARCH_S:-15}
MAX_TRIALS=${MAX_TRIALS:-7}
EXPERIMENTS=${EXPERIMENTS:-1,2,3}
CAP_GIB=${CAP_GIB:-16}
status=0
"$PY" -c 'import torch; print("torch", torch.__version__, "gpus", torch.cuda.device_count(),
torch.cuda.get_device_name(0))' | tee "$OUT/env_paper_p$NPROC.txt"
for model in $MODELS; do
  dir="$OUT/paper_${model}_p$NPROC"
  echo "=== $model on $NPROC GPU(s), cap $CAP_GIB GiB"
  # hard stop 20 s after the budget: a trial that started just before it may finish
  limit=$("$PY" -c "print(int($MINUTES * 60 + 20))")
  cap=(--gpu-memory-gib "$CAP_GIB"); [ "$CAP_GIB" = none ] && cap=()
  timeout "$limit" "$PY" -m seqpar.cli bench paper --models "$model" --nproc "$NPROC" \
    "${cap[@]}" --methods "$METHODS" --experiments "$EXPERIMENTS" \
    --max-minutes "$MINUTES" --search-seconds "$SEARCH_S" --max-trials "$MAX_TRIALS" \
    --batch-start 8 --out "$dir" ${EXTRA:-} 2>&1 | grep -v "^\[W" | tee "$OUT/paper_${model}_p$NPROC.log" | tail -60
  rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && { echo "FAILED: $model rc=$rc (see $OUT/paper_${model}_p$NPROC.log)"; status=1; }
done
exit $status
