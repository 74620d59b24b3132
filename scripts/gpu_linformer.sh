#!/usr/bin/env bash
# Issue 16, Linformer under SP: the longest sequence bert-base (Linformer k=256) trains
# (fwd + bwd + AdamW step, bf16 autocast, full activation checkpointing, chunked loss)
# on 1 GPU and, with 2 GPUs, under sp=2; doubling then bisecting until out of memory.
# First a small NCCL exactness check of Linformer-SP against one process. One call,
# < 10 min on 1 or 2 H200s. JSON under $OUT: check.json, max_len_sp1.json, max_len_sp2.json.
#   bash scripts/gpu_linformer.sh        (K=256, START1/START2, BUDGET1/BUDGET2 override)
set -u -o pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export SEQPAR_LOG_DIR=${SEQPAR_LOG_DIR:-/tmp/seqpar-logs}
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
K=${K:-256}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/env.txt"
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda)" >> "$OUT/env.txt"
if [ "$NGPU" -ge 2 ]; then
  B1=${BUDGET1:-230}; B2=${BUDGET2:-290}
  echo "== check (sp=2, NCCL)"
  timeout 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 \
    scripts/gpu_linformer.py check --out "$OUT/check.json" 2>&1 | grep -v "^\[W\|^W1" | tail -4
  echo "== search sp=2"
  "$PY" scripts/gpu_linformer.py search --nproc 2 --k "$K" --start "${START2:-1048576}" \
    --budget-s "$B2" --out "$OUT/max_len_sp2.json"
else
  B1=${BUDGET1:-520}
fi
echo "== search sp=1 (one device)"
"$PY" scripts/gpu_linformer.py search --nproc 1 --k "$K" --start "${START1:-524288}" \
  --budget-s "$B1" --out "$OUT/max_len_sp1.json"
"$PY" - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); rows = {}
for p in sorted(out.glob("max_len_sp*.json")):
    d = json.loads(p.read_text()); rows[d["nproc"]] = d["max_length"]
    b = d["best"] or {}
    print(f"sp={d['nproc']}: max {d['max_length']:,} tokens (first failure {d['first_failure']}), "
          f"step {b.get('ranks', [{}])[0].get('step_s', 0):.2f} s")
if 1 in rows and 2 in rows and rows[1]:
    print(f"ratio sp=2 / one device: {rows[2] / rows[1]:.2f}x")
PYEOF
