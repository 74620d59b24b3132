"""Summarise scripts/gpu_speed.sh's runs: $OUT/speed.json and a markdown table on stdout.

usage: python3 scripts/gpu_speed_summary.py OUT MODEL GPUS
Per seqpar run: tokens/s/GPU (the run's timed mean: warm-up and profiled steps left out),
causal-MFU and the hardware-convention MFU (seqpar.train.flops, 989 TFLOP/s), peak GPU
memory per rank, the checkpointing used, and the --profile-step split when there is one.
The baseline's figure is its best timed step (its own script's convention).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from seqpar.models import model_config
from seqpar.train.flops import mfu_report
from seqpar.train.step_profile import PARTS

NUM = r"([\d,\.]+)"


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def seqpar_run(log: Path, model: str, gpus: int) -> dict:
    text = log.read_text(errors="replace")
    name = log.stem
    r: dict = {"name": name, "rc": None}
    m = re.search(r"rc=(\d+)", text)
    r["rc"] = int(m.group(1)) if m else None
    m = re.search(r"seq_len (\d+)", text)
    seq = int(m.group(1)) if m else (131072 if "128" in name else 65536)
    r["seq_len"] = seq
    m = re.search(r"activation checkpointing: (\w+)", text)
    r["ac"] = m.group(1) if m else ("full" if "full_ac" in name else "?")
    m = re.search(rf"summary: .*?\| {NUM} tokens/s.*?peak memory per rank \(GPU allocated, "
                  rf"MiB\): ([\d, ]+)", text)
    if m:
        tps = _num(m.group(1)) / gpus
        r["tokens_per_s_per_gpu"] = tps
        r["peak_GiB"] = max(_num(x) for x in m.group(2).split(",")) / 1024
        mode = r["ac"] if r["ac"] in ("none", "selective", "full", "offload") else "full"
        rep = mfu_report(model_config(model, vocab_size=128256), seq, tps, ac_mode=mode)
        r["causal_mfu"], r["hardware_mfu"] = rep["causal_mfu"], rep["hardware_mfu"]
    metrics = log.with_suffix(".jsonl")
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if "profile" in row:
                r["profile"] = row["profile"]
    rank0 = log.with_suffix(".rank0.txt")
    both = text + (rank0.read_text(errors="replace") if rank0.exists() else "")
    r["sync_warnings"] = both.count("synchronizing CUDA operation")  # SEQPAR_SYNC_DEBUG
    err = [line for line in text.splitlines() if "error" in line.lower()][:3]
    if err:
        r["errors"] = err
    return r


def main(out: str, model: str, gpus: str) -> None:
    root, gpus_n = Path(out), int(gpus)
    runs = [seqpar_run(p, model, gpus_n) for p in sorted(root.glob("s*.log"))]
    skipped = [p.stem for p in sorted(root.glob("*.skip"))]
    base = None
    bj = root / "e2e_torch_cp_llama8b.json"
    if bj.exists():
        b = json.loads(bj.read_text()).get("L65536")
        if isinstance(b, dict):
            rep = mfu_report(model_config("8b", vocab_size=128256), 65536,
                             b["tokens_per_s_per_gpu"], ac_mode="full")
            base = {"name": "pytorch_cp_fsdp2_64k", "seq_len": 65536, "ac": "full",
                    "tokens_per_s_per_gpu": b["tokens_per_s_per_gpu"],
                    "peak_GiB": b["peak_GiB"], "causal_mfu": rep["causal_mfu"],
                    "hardware_mfu": rep["hardware_mfu"]}
        else:
            base = {"name": "pytorch_cp_fsdp2_64k", "error": str(b)}
    (root / "speed.json").write_text(json.dumps(
        {"model": model, "gpus": gpus_n, "runs": runs, "baseline": base, "skipped": skipped},
        indent=1))
    print(f"| run ({model}, {gpus_n} GPU) | L | AC | tokens/s/GPU | causal-MFU | hw-MFU | "
          f"peak GiB | vs baseline |")
    print("|---|---|---|---|---|---|---|---|")
    ref = base.get("tokens_per_s_per_gpu") if base else None
    for r in ([base] if base else []) + runs:
        if "tokens_per_s_per_gpu" not in r:
            print(f"| {r['name']} | | | failed ({r.get('errors') or r.get('error') or r.get('rc')})"
                  f" | | | | |")
            continue
        vs = f"{r['tokens_per_s_per_gpu'] / ref:.2f}x" if ref and r["seq_len"] == 65536 else ""
        print(f"| {r['name']} | {r['seq_len'] // 1024}K | {r['ac']} | "
              f"{r['tokens_per_s_per_gpu']:,.0f} | {100 * r['causal_mfu']:.1f}% | "
              f"{100 * r['hardware_mfu']:.1f}% | {r['peak_GiB']:.1f} | {vs} |")
    for r in runs:
        if "profile" in r:
            p = r["profile"]
            print(f"\nprofile {r['name']} (step span {p['span_ms']:.0f} ms): " + ", ".join(
                f"{k} {100 * p['fraction'][k]:.1f}%" for k in PARTS))
    if skipped:
        print(f"\nskipped (budget): {', '.join(skipped)}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
