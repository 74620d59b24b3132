"""Plot the longest trainable sequence vs GPUs: seqpar's planner (Llama-3-8B shape,
V = 128,256, 139 GiB H200s, host memory as on the machines we use), the PyTorch
context_parallel + FSDP2 baseline (measured: 64K runs and 128K runs out of memory on
2xH200), and ALST's published figures (500K on 1 H100, 3.7M on 8 H100s).

Usage: python3 scripts/plot_max_length.py [OUT.png] (default
benchmarks/results/max_length_vs_gpus.png). Needs matplotlib (not a seqpar
dependency): without it the script says so and prints the numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from seqpar.memory.planner import max_seq_len
from seqpar.models import model_config

#: host memory (GiB) of the machines: 1xH200 128, 2x 256, 4x 512, 8x 560
HOST_GIB = {1: 128, 2: 256, 4: 512, 8: 560}
#: measured (BENCHMARKS.md, issue 13): the longest length that ran on that many GPUs
TORCH_CP = {2: 65536}
#: ALST (arXiv 2506.13996), Llama-3-8B on H100 80 GB
ALST = {1: 500_000, 8: 3_700_000}


def planned() -> dict[int, int]:
    cfg = model_config("8b", vocab_size=128256)
    return {g: max_seq_len(cfg, g, 139, h) for g, h in HOST_GIB.items()}


def main(out: str = "benchmarks/results/max_length_vs_gpus.png") -> int:
    ours = planned()
    for g, n in ours.items():
        print(f"seqpar planner: {g} GPU(s), host {HOST_GIB[g]} GiB: {n:,} tokens")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_max_length: matplotlib is not installed (pip install matplotlib); "
              "the numbers are above, no plot written", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(6, 4))
    gs = sorted(ours)
    ax.plot(gs, [ours[g] / 1e6 for g in gs], "o-", label="seqpar (planner, 8B, V=128K, H200)")
    for g in gs:
        if ours[g] == 0:
            ax.annotate("nothing fits:\n128 GiB host", (g, 0), textcoords="offset points",
                        xytext=(5, 10), fontsize=8)
    ax.plot(sorted(ALST), [ALST[g] / 1e6 for g in sorted(ALST)], "s", markersize=8,
            label="ALST (published, H100 80 GB)")
    ax.plot(sorted(TORCH_CP), [TORCH_CP[g] / 1e6 for g in sorted(TORCH_CP)], "x",
            markersize=10, label="PyTorch CP + FSDP2 (measured; 128K OOM)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(gs, [str(g) for g in gs])
    ax.set_xlabel("GPUs")
    ax.set_ylabel("longest trainable sequence (M tokens)")
    ax.set_title("Llama-3-8B shape, B=1, bf16, fp32 AdamW")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
