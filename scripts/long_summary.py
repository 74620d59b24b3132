"""Summarise one ``scripts/gpu_long.sh`` run as JSON: step time, tokens/s/GPU, causal-MFU,
peak GPU (allocated, per rank) and host memory, against the planner's prediction.

Usage: python3 scripts/long_summary.py CASE LOG METRICS HOSTPEAK PLAN_JSON OUT_JSON
(LOG: seqpar train's stdout; METRICS: its --metrics JSONL; HOSTPEAK: a file holding the
largest used host memory in bytes; PLAN_JSON: the prediction, written first by
``python3 scripts/long_summary.py predict MODEL V L GPUS N_LAYERS OPTIONS PLAN_JSON`` with
OPTIONS ``auto`` (the planner's choice, as --memory auto makes it, for this machine's GPU
and host memory) or ``LOSS_CHUNK,MLP_CHUNK,MODE,OFFLOAD_LAYERS,OFFLOAD_OPTIMIZER(0/1)``).
Causal-MFU as in BENCHMARKS.md: (6 P_nonembedding + 6 n_layers d L) per token x
tokens/s/GPU / 989 TFLOP/s (H200 dense bf16), recomputation not counted.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

H200_BF16 = 989e12


def main(case: str, log: str, metrics: str, hostpeak: str, plan_json: str, out: str) -> None:
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    rows = [json.loads(x) for x in Path(metrics).read_text().splitlines()
            if x.strip()] if Path(metrics).exists() else []
    plan = json.loads(Path(plan_json).read_text()) if Path(plan_json).exists() else {}
    inputs = plan.get("inputs", {})
    gpus, seq = inputs.get("gpus", 1), inputs.get("seq_len", 0)
    times = [r["step_time_s"] for r in rows[1:]] or [r["step_time_s"] for r in rows]
    step = statistics.median(times) if times else None
    tps_gpu = seq / step / gpus if step else None
    mfu = None
    if tps_gpu and plan:
        from seqpar.models import model_config

        cfg = model_config(inputs["model"], vocab_size=inputs["vocab_size"],
                           n_layers=inputs.get("n_layers", 32))
        p_nonemb = cfg.num_params() - cfg.vocab_size * cfg.dim
        flops = 6 * p_nonemb + 6 * cfg.n_layers * cfg.dim * seq
        mfu = flops * tps_gpu / H200_BF16
    m = re.search(r"peak memory per rank \(GPU allocated, MiB\): ([\d., ]+)", text)
    peaks = [float(x) / 1024 for x in m.group(1).split(",")] if m else []
    host = Path(hostpeak).read_text().strip() if Path(hostpeak).exists() else ""
    header = [line for line in text.splitlines() if line.startswith(("memory:", "start-up:"))]
    pred = plan.get("peak_gpu_allocated_gib")
    result = {
        "case": case, "steps_measured": len(rows), "step_time_s": step,
        "step_times_s": [r["step_time_s"] for r in rows],
        "tokens_per_s_per_gpu": tps_gpu, "causal_mfu": mfu,
        "peak_gpu_allocated_gib": peaks,
        "predicted_peak_gpu_allocated_gib": pred,
        "prediction_error": (max(peaks) - pred) / pred if peaks and pred else None,
        "peak_host_used_gib": int(host) / 2**30 if host.isdigit() else None,
        "predicted_peak_host_gib": plan.get("peak_host_gib"),
        "plan": plan, "header": header,
        "losses": [r["loss"] for r in rows],
        "error_tail": [] if peaks else text.splitlines()[-15:],
    }
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("plan", "error_tail")},
                     indent=1))


def predict(model: str, vocab: str, seq_len: str, gpus: str, n_layers: str, options: str,
            out: str) -> None:
    import os

    import torch

    from seqpar.memory.planner import GiB, MemoryConfig, config_dict, estimate, plan
    from seqpar.models import model_config

    gpu = torch.cuda.get_device_properties(0).total_memory / GiB if torch.cuda.is_available() \
        else 139.0
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    v, n, g, layers = int(vocab), int(seq_len), int(gpus), int(n_layers)
    result = plan(model, v, n, g, gpu, host, n_layers=layers)
    if options != "auto":
        loss, mlp, mode, k, opt = options.split(",")
        mc = MemoryConfig(int(loss), int(mlp), mode, int(k), opt == "1")
        cfg = model_config(model, vocab_size=v, n_layers=layers)
        e = estimate(cfg, n, g, mc, gpu_memory_gib=gpu, host_memory_gib=host)
        result.update(fits=e.fits, peak_gpu_gib=round(e.reserved_gpu / GiB, 2),
                      peak_gpu_allocated_gib=round(e.peak_gpu / GiB, 2),
                      peak_host_gib=round(e.peak_host / GiB, 2),
                      config=config_dict(mc, layers),
                      breakdown_gib={k: round(x, 2) for k, x in e.parts.items()})
    Path(out).write_text(json.dumps(result, indent=1))
    c = result["config"]
    print(f"planner: {model} x{layers} layers, {n} tokens on {g} GPUs ({gpu:.1f} GiB, host "
          f"{host:.0f} GiB): {'fits' if result['fits'] else 'does NOT fit'}, peak "
          f"{result['peak_gpu_allocated_gib']} GiB allocated, host {result['peak_host_gib']} "
          f"GiB; {c}; max {result['max_seq_len']} ({result['max_seq_len_bound']} binds)")


if __name__ == "__main__":
    if sys.argv[1] == "predict":
        predict(*sys.argv[2:9])
    else:
        main(*sys.argv[1:7])
