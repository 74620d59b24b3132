"""PNG figures like the paper's: max batch and max length against GPUs (SP vs TP), and
weak scaling's per-GPU memory and tokens/s. One file per model.

matplotlib is optional (the ``plot`` extra): without it :func:`save_plots` returns
an empty list and :data:`MISSING` says why, and nothing else changes.
"""

from __future__ import annotations

import os

MISSING = "matplotlib is not installed (pip install 'seqpar[plot]'): no PNG written"


def _series(rows: list[dict], key: str = "max") -> dict[str, tuple[list, list]]:
    out: dict[str, tuple[list, list]] = {}
    for r in sorted(rows, key=lambda r: r["P"]):
        if r.get("status") == "ok" and r.get(key):
            xs, ys = out.setdefault(r["method"], ([], []))
            xs.append(r["P"])
            ys.append(r[key])
    return out


def save_plots(data: dict, out_dir: str) -> list[str]:
    """Write ``paper_<model>.png`` under ``out_dir``; the paths written ([] without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for model, res in data["results"].items():
        weak = res.get("weak_scaling", [])
        plan = data["meta"]["plan"]
        panels = [(f"max batch at L={plan['batch_len']}",
                   _series(res.get("max_batch", [])), "max batch"),
                  (f"max length at B={plan['fixed_batch']}",
                   _series(res.get("max_length", [])), "max length (tokens)"),
                  ("weak scaling (length×P): peak memory per GPU",
                   _series([r for r in weak if r["series"] == "length×P"], "peak_gib"), "GiB"),
                  ("throughput at a common configuration",
                   _series([r for r in weak if r["series"] == "common"], "tokens_per_s"),
                   "tokens/s")]
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for ax, (title, series, ylabel) in zip(axes.flat, panels):
            for method, (xs, ys) in series.items():
                style = "--" if method.startswith("tp") else "-"
                ax.plot(xs, ys, style, marker="o", label=method)
            ps = sorted({x for xs, _ in series.values() for x in xs})
            if ps:
                ax.set_xticks(ps)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("GPUs")
            ax.set_ylabel(ylabel)
            if series:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        fig.suptitle(f"{model}: sequence parallelism (solid) vs tensor parallelism (dashed); "
                     f"{data['meta'].get('cap', '')}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"paper_{model}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
