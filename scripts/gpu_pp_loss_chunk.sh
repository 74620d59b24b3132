#!/usr/bin/env bash
# Issue 15 follow-up: --loss-chunk with --pp on 2xH200. The 1b model (16 layers) with Llama-3's
# vocabulary (--vocab-size 128256) at 16K tokens, batch 8, pp=2 x sp=1, 1F1B over 8 microbatches,
# full checkpointing: without and with --loss-chunk 4096. Per run: the losses (equal to ~bf16
# rounding), tokens/s, the planner's predicted peak and the measured peak per rank (the last
# rank holds the head: the chunked loss should cut its peak by about the logits' 14 B x V x
# tokens-per-microbatch), to $OUT/pp_loss_chunk.json. bash scripts/gpu_pp_loss_chunk.sh (~4 min)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SEQPAR_LOG_DIR=/tmp/sl
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
COMMON="--model 1b --vocab-size 128256 --seq-len 16384 --batch-size 8 --steps 6 --warmup 1 --log-every 1 --nproc 2 --pp 2 --sp 1 --pp-schedule 1f1b --microbatches 8 --activation-checkpointing full"
i=0
for extra in "--loss-chunk 0" "--loss-chunk 4096"; do
  i=$((i+1)); echo "=== run $i: $extra"
  timeout 110 python3 -m seqpar.cli train $COMMON $extra --metrics $OUT/plc_$i.jsonl 2>&1 | grep -v "^\[W" \
    | tee /tmp/plc_run.txt | tail -6
  echo "rc=${PIPESTATUS[0]}"; tail -n 8 /tmp/sl/*/rank-*.log 2>/dev/null | tail -16; rm -rf /tmp/sl
  grep -E "memory: |peak memory" /tmp/plc_run.txt > $OUT/plc_mem_$i.txt
done
python3 - "$OUT" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
summary = []
for i, name in enumerate(["no loss chunk", "loss chunk 4096"], 1):
    path = out / f"plc_{i}.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
    mem = (out / f"plc_mem_{i}.txt").read_text() if (out / f"plc_mem_{i}.txt").exists() else ""
    planned = re.search(r"predicted peak ([\d.]+)", mem)
    measured = re.search(r"peak memory per rank[^:]*: ([\d., ]+)", mem)
    timed = rows[1:]
    summary.append(dict(run=name, steps=len(rows), losses=[r["loss"] for r in rows],
                        tokens_per_s=sum(r["tokens_per_s"] for r in timed) / len(timed)
                        if timed else None,
                        planned_peak_gib=float(planned.group(1)) if planned else None,
                        measured_peak_mib_per_rank=[float(x) for x in
                                                    measured.group(1).split(",")]
                        if measured else None))
    print(json.dumps(summary[-1]))
(out / "pp_loss_chunk.json").write_text(json.dumps(summary, indent=1) + "\n")
PY
