#!/usr/bin/env bash
# Issue 14: a Hugging Face Llama folder trained with `seqpar train --hf` vs the native model of
# the same shape, same length, same memory options, in one call (<= 10 min).
#   GPUS=2 (default, 2xH200): Llama-3-8B shape (vocab 128256) vs --model 8b --vocab-size 128256
#   GPUS=1 (1xH200):          Llama-3.2-1B shape (tied embeddings) vs --model 1b, sp=1
# LEN (default 131072), STEPS (default 3; the first step is not counted in tokens/s).
# Both runs take --memory auto: the planner sees the same shape for both (seqpar.hf.memory.
# planner_config == model_config; tests/test_hf_memory.py) so it picks the same options
# (chunked loss, tiled MLP, selective/full checkpointing); the chosen line is recorded.
# --no-documents: both attend causally over the whole window (the native byte data and the
# HF word data would otherwise split it into different documents).
# Output: $OUT/hf_vs_native.json (tokens/s/GPU, peak memory per rank, options, HF/native speed
# ratio) plus each run's metrics .jsonl and log.   bash scripts/gpu_hf_vs_native.sh
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SEQPAR_LOG_DIR=/tmp/sl
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
GPUS=${GPUS:-2}; LEN=${LEN:-131072}; STEPS=${STEPS:-3}; VOCAB=${VOCAB:-128256}
if [ "$GPUS" = 1 ]; then SHAPE=${SHAPE:-1b}; else SHAPE=${SHAPE:-8b}; fi
HF=/tmp/hf_${SHAPE}_$VOCAB; DATA=$HF.jsonl
t0=$(date +%s)
# the random-weights folder is written on the CPU while the native run uses the GPUs
# (the data file comes first: the native run reads it too)
if [ ! -f $HF/model.safetensors.index.json ]; then  # written last
  python3 scripts/make_hf_model.py $HF --shape $SHAPE --vocab-size $VOCAB \
    --max-positions $LEN --data $DATA --docs 400 > $OUT/make_hf_model.log 2>&1 &
  MAKE=$!
  while [ ! -s $DATA ] || ! grep -q "documents" $OUT/make_hf_model.log 2>/dev/null; do
    kill -0 $MAKE 2>/dev/null || break; sleep 2; done
fi
COMMON="--seq-len $LEN --batch-size 1 --steps $STEPS --warmup 1 --log-every 1 --nproc $GPUS
  --sp $GPUS --strategy ring --layout zigzag --dtype bfloat16 --memory auto --data $DATA
  --no-documents"
run() {  # name, budget seconds, model args
  local name=$1 budget=$2; shift 2
  echo "=== $name: $*"
  local t=$(date +%s)
  timeout $budget python3 -m seqpar.cli train "$@" $COMMON --metrics $OUT/$name.jsonl \
    > $OUT/$name.log 2>&1
  echo "rc=$? in $(( $(date +%s) - t )) s"
  grep -v "^\[W" $OUT/$name.log | grep -E "memory:|summary|error|Error|step $STEPS/" | tail -6
  tail -n 5 /tmp/sl/*/rank-0.log 2>/dev/null | tail -5; rm -rf /tmp/sl
}
run native 220 --model $SHAPE --vocab-size $VOCAB
[ -n "${MAKE:-}" ] && wait $MAKE; cat $OUT/make_hf_model.log 2>/dev/null | tail -2
echo "folder ready $(( $(date +%s) - t0 )) s after the start"; df -h /tmp | tail -1
run hf 250 --hf $HF
python3 - "$OUT" "$GPUS" "$SHAPE" "$LEN" "$VOCAB" <<'EOF'
import json, re, sys
from pathlib import Path
out, gpus, shape, length = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
res = {"gpus": gpus, "shape": shape, "seq_len": length, "vocab_size": int(sys.argv[5])}
for name in ("native", "hf"):
    log = (out / f"{name}.log").read_text() if (out / f"{name}.log").exists() else ""
    rows = [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()] \
        if (out / f"{name}.jsonl").exists() else []
    timed = rows[1:] or rows  # the first step compiles/warms up
    tps = sum(r["tokens_per_s"] for r in timed) / len(timed) if timed else None
    summ = re.search(r"summary: .*?([\d,]+) tokens/s \| peak memory per rank \(([^)]*), MiB\): "
                     r"([\d, ]+)", log)
    plan = re.search(r"^memory: .*$", log, re.M)
    res[name] = {"ok": bool(summ), "steps": len(rows),
                 "tokens_per_s_per_gpu": None if tps is None else round(tps / gpus, 1),
                 "step_time_s": [round(r["step_time_s"], 2) for r in rows],
                 "losses": [round(r["loss"], 4) for r in rows],
                 "summary_tokens_per_s": int(summ.group(1).replace(",", "")) if summ else None,
                 "peak_memory_mib": [float(x) for x in summ.group(3).split(",")] if summ else None,
                 "peak_memory_kind": summ.group(2) if summ else None,
                 "memory_plan": plan.group(0) if plan else None}
n, h = res["native"]["tokens_per_s_per_gpu"], res["hf"]["tokens_per_s_per_gpu"]
res["hf_over_native_speed"] = round(h / n, 4) if n and h else None
(out / "hf_vs_native.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
EOF
