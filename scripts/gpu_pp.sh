#!/usr/bin/env bash
# Issue 15: pipeline parallelism on 2xH200. The 1b model (16 layers) at 16K tokens, batch 8:
# pp=1 x sp=2 (the baseline), then pp=2 with GPipe, 1F1B and interleaved 1F1B (2 virtual
# stages per rank); tokens/s and the measured bubble (idle fraction per stage) of each run
# go to $OUT/pp.json. NCCL cannot put two ranks on one GPU, so pp=2 uses both GPUs (sp=1).
# The planner models pp (its predicted peak is the "memory: predicted peak" line, the measured
# one "peak memory per rank": both go to $OUT/pp_mem_<i>.txt). bash scripts/gpu_pp.sh (about 6 min)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SEQPAR_LOG_DIR=/tmp/sl
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
COMMON="--model 1b --seq-len 16384 --batch-size 8 --steps 8 --warmup 1 --log-every 1 --nproc 2 --activation-checkpointing"
i=0
for extra in "--sp 2" "--pp 2 --sp 1 --pp-schedule gpipe --microbatches 4" \
             "--pp 2 --sp 1 --pp-schedule 1f1b --microbatches 8" \
             "--pp 2 --sp 1 --pp-schedule interleaved --virtual-stages 2 --microbatches 8"; do
  i=$((i+1)); echo "=== run $i: $extra"
  timeout 110 python3 -m seqpar.cli train $COMMON $extra --metrics $OUT/pp_$i.jsonl 2>&1 | grep -v "^\[W" \
    | tee /tmp/pp_run.txt | tail -6
  echo "rc=${PIPESTATUS[0]}"; tail -n 8 /tmp/sl/*/rank-*.log 2>/dev/null | tail -16; rm -rf /tmp/sl
  grep -E "memory: |peak memory" /tmp/pp_run.txt > $OUT/pp_mem_$i.txt
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = ["pp=1 sp=2", "pp=2 gpipe m=4", "pp=2 1f1b m=8", "pp=2 interleaved v=2 m=8"]
summary = []
for i, name in enumerate(runs, 1):
    path = out / f"pp_{i}.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
    timed = rows[1:]  # the first step pays for warm-up
    tps = sum(r["tokens_per_s"] for r in timed) / len(timed) if timed else None
    bub = [r["bubble"] for r in timed if "bubble" in r]
    per = [r["bubble_per_stage"] for r in timed if "bubble_per_stage" in r]
    summary.append(dict(run=name, steps=len(rows), tokens_per_s=tps,
                        final_loss=rows[-1]["loss"] if rows else None,
                        bubble=sum(bub) / len(bub) if bub else None,
                        bubble_per_stage=[sum(c) / len(c) for c in zip(*per)] if per else None))
    print(json.dumps(summary[-1]))
(out / "pp.json").write_text(json.dumps(summary, indent=1) + "\n")
PY
