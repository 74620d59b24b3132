"""Text tables in the paper's layout: GPUs down, SP / TP methods across, a ratio column.

A cell is the found maximum; ``≥N`` marks a search that stopped on its budget
(a lower bound), ``OOM`` that not even the smallest value fit, ``n/a`` a
configuration that cannot exist (TP over more GPUs than heads), ``-`` one skipped
for time. The ratio is the best SP method over plain TP (the paper's baseline)
at the same P, and over TP-SP.
"""

from __future__ import annotations

from .reported import REPORTED, SOURCE, reported_ratio
from .trial import SP_METHODS


def cell(row: dict | None) -> str:
    if row is None:
        return ""
    status = row.get("status")
    if status == "ok":
        exact = row.get("exact", True)
        return f"{'' if exact else '≥'}{row['max']}"
    return {"oom": "OOM", "invalid": "n/a", "skipped": "-"}.get(status, "error")


def _ratio(rows: dict, methods: list[str], base: str) -> str:
    sp = [rows[m]["max"] for m in methods if m in SP_METHODS and m in rows
          and rows[m].get("status") == "ok"]
    b = rows.get(base)
    if not sp or not b or b.get("status") != "ok" or not b.get("max"):
        return ""
    return f"{max(sp) / b['max']:.2f}x"


def search_table(rows: list[dict], title: str, experiment: str) -> str:
    """Experiment 1 or 2 for one model."""
    if not rows:
        return ""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    model = rows[0]["model"]
    head = ["GPUs"] + methods + ["SP/TP", "SP/TP-SP"]
    lines = [title, "  ".join(f"{h:>9}" for h in head)]
    for p in sorted({r["P"] for r in rows}):
        by = {r["method"]: r for r in rows if r["P"] == p}
        cells = [str(p)] + [cell(by.get(m)) for m in methods]
        cells += [_ratio(by, methods, "tp"), _ratio(by, methods, "tp-sp")]
        lines.append("  ".join(f"{c:>9}" for c in cells))
    paper = reported_ratio(experiment, model)
    if paper:
        lines.append(f"  paper: {paper}x at P=64 vs TP's best ({SOURCE})")
    return "\n".join(lines)


def weak_table(rows: list[dict]) -> str:
    """Experiment 3: per series, P down, each method's peak GiB per GPU and tokens/s."""
    out = []
    for series in dict.fromkeys(r["series"] for r in rows):
        mine = [r for r in rows if r["series"] == series]
        methods = list(dict.fromkeys(r["method"] for r in mine))
        out.append(f"weak scaling, {series} (peak GiB per GPU / tokens/s):")
        out.append("  ".join([f"{'GPUs':>4}", f"{'B':>5}", f"{'L':>7}"]
                             + [f"{m:>18}" for m in methods]))
        for p in sorted({r["P"] for r in mine}):
            by = {r["method"]: r for r in mine if r["P"] == p}
            any_row = next(iter(by.values()))
            cells = []
            for m in methods:
                r = by.get(m)
                if r and r["status"] == "ok":
                    cells.append(f"{r['peak_gib']:.3f} / {r['tokens_per_s']:.0f}")
                else:
                    cells.append(cell({**r, "status": r["status"]}) if r else "")
            out.append("  ".join([f"{p:>4}", f"{any_row['batch']:>5}",
                                  f"{any_row['seq_len']:>7}"] + [f"{c:>18}" for c in cells]))
    out.append(f"  paper (Table 4): {REPORTED['weak_scaling']['note']}")
    return "\n".join(out)


def linformer_table(res: dict) -> str:
    if res.get("status") != "ok":
        return f"linformer: {res.get('status')}: {res.get('reason', '')}"
    lines = [f"linformer (k={res['k']}): max length"]
    for r in res["rows"]:
        lines.append(f"  P={r['P']}: {cell(r)}")
    if res.get("ratio"):
        lines.append(f"  ratio {res['ratio']:.1f}x")
    p = REPORTED["linformer"]
    lines.append(f"  paper: {p['sp_tokens']:,} tokens on {p['P']} GPUs, "
                 f"{p['ratio_vs_one_device']}x one device")
    return "\n".join(lines)


def model_table(model_report: dict) -> str:
    lines = ["memory model (the paper's formulas, fitted; docs/paper.md):"]
    for model, entry in model_report.items():
        for m, f in entry["fits"].items():
            if f is None:
                lines.append(f"  {model} {m}: too few points to fit")
            else:
                lines.append(f"  {model} {m}: c={f['c_gib']:.3f} GiB, "
                             f"{f['bytes_per_linear_element']:.2f} B/BLH-element, "
                             f"{f['bytes_per_quadratic_element']:.2f} B/BZL²-element, "
                             f"{f['points']} points, rms error {f['rms_rel_error']:.1%}")
        ex = entry.get("extrapolation")
        if ex:
            mb, ml, ms = ex["max_batch"], ex["max_length"], ex["max_length_same_16"]
            fmt = lambda r: f"{r:.1f}x" if r else "-"  # noqa: E731
            pb = reported_ratio("max_batch", model)
            lines.append(f"  {model} at P={ex['P_sp']} ({ex['sp_method']}) vs TP's best "
                         f"(P={ex['P_tp_best']}), {ex['cap_gib']:g} GiB: max batch "
                         f"{mb['sp']} vs {mb['tp']} = {fmt(mb['ratio'])} (paper "
                         f"{pb or '-'}x); max length {ml['sp']} vs {ml['tp']} = "
                         f"{fmt(ml['ratio'])} (paper {REPORTED['max_length']['ratio_at_64']}x); "
                         f"at P={ms['P']}: {fmt(ms['ratio'])} (paper "
                         f"{REPORTED['max_length']['ratio_same_16']}x)")
    return "\n".join(lines)


def render(data: dict) -> str:
    """Every table of a ``seqpar bench paper`` JSON document."""
    parts = [f"seqpar bench paper: {data['meta'].get('command', '')}",
             f"cap: {data['meta'].get('cap', '')}; device: {data['meta'].get('device', '')}"]
    plan = data["meta"]["plan"]
    for model, res in data["results"].items():
        parts.append(f"== {model} ==")
        if "max_batch" in res:
            parts.append(search_table(res["max_batch"], f"max batch at L={plan['batch_len']}",
                                      "max_batch"))
        if "max_length" in res:
            parts.append(search_table(res["max_length"], f"max length at B="
                                      f"{plan['fixed_batch']}", "max_length"))
        if "weak_scaling" in res:
            parts.append(weak_table(res["weak_scaling"]))
        if "linformer" in res:
            parts.append(linformer_table(res["linformer"]))
    if data.get("memory_model"):
        parts.append(model_table(data["memory_model"]))
    return "\n\n".join(p for p in parts if p)
