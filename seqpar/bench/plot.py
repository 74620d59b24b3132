"""PNG plot of ``seqpar bench attention`` results: per-GPU TFLOP/s against total length.

One panel per (Hkv, mask), Hkv down and mask across; our strategies solid,
PyTorch context_parallel dashed, the single-GPU ceiling (best SDPA backend at
equal per-GPU FLOPs) in black.
matplotlib is optional: without it ``save_plot`` returns False and nothing else
changes, so CPU CI never needs it.
"""

from __future__ import annotations

from .report import derive, human_length


def save_plot(records: list[dict], meta: dict, path: str) -> bool:
    """Write the plot to ``path``; False if matplotlib is missing or nothing ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    derive(records)
    ok = [r for r in records if r.get("status") == "ok" and (r.get("tflops_per_gpu") or 0) > 0]
    if not ok:
        return False
    hkvs = sorted({r["hkv"] for r in ok}, reverse=True)
    masks = sorted({r["causal"] for r in ok}, reverse=True)  # causal first
    fig, axes = plt.subplots(len(hkvs), len(masks), figsize=(9.5 * len(masks), 5 * len(hkvs)),
                             squeeze=False)
    names = sorted({r["name"] for r in ok if r["kind"] != "ceiling"})
    colors = plt.get_cmap("tab20")
    for (i, hkv), (j, causal) in ((a, b) for a in enumerate(hkvs) for b in enumerate(masks)):
        ax = axes[i][j]
        recs = [r for r in ok if r["hkv"] == hkv and r["causal"] == causal]
        if not recs:
            ax.set_visible(False)
            continue
        lengths = sorted({r["L"] for r in recs})
        ceiling: dict[int, float] = {}
        for r in recs:
            if r["kind"] == "ceiling":
                ceiling[r["L"]] = max(ceiling.get(r["L"], 0.0), r["tflops_per_gpu"])
        if ceiling:
            xs = sorted(ceiling)
            ax.plot(xs, [ceiling[x] for x in xs], "k-", marker="*", ms=12, lw=2.5, alpha=0.6,
                    label="ceiling: 1-GPU SDPA, same per-GPU FLOPs")
        for n, name in enumerate(names):
            pts = sorted((r["L"], r["tflops_per_gpu"]) for r in recs if r["name"] == name)
            if not pts:
                continue
            peer = next(r["kind"] for r in recs if r["name"] == name) == "peer"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if peer else "-",
                    marker="s" if peer else "o", color=colors(n % 20), label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths)
        ax.set_xticklabels([human_length(n) for n in lengths])
        ax.set_xlabel("total sequence length L")
        ax.set_ylabel("TFLOP/s per device (fwd+bwd)")
        r0 = recs[0]
        ax.set_title(f"Hq={r0['hq']} Hkv={hkv} D={r0['d']} {r0['dtype']} "
                     f"{'causal' if causal else 'full'}, P={meta.get('world_size')}")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    device = meta.get("gpu") or meta.get("device") or ""
    fig.suptitle(f"seqpar attention vs torch context_parallel: {device}, "
                 f"torch {meta.get('torch')}, {meta.get('date', '')[:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
