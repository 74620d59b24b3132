"""FLOP accounting, derived metrics, tables and the JSON file of ``seqpar bench attention``.

Kept free of torch.distributed so the numbers can be re-derived and re-printed
from a saved JSON (``seqpar bench report results.json``) on any machine, e.g.
to paste a table into BENCHMARKS.md after a GPU run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable

FLOPS_RULE = ("fwd = 4*B*Hq*L*L*D, halved for causal; fwd+bwd = 3.5 x fwd; "
              "per-GPU TFLOP/s = total FLOPs / P / time")
CEILING_RULE = ("single-GPU SDPA fwd+bwd (same B, Hq, Hkv, D, dtype, mask) at L1 = L/sqrt(P), "
                "which has the per-GPU FLOPs of the P-GPU problem at total length L; L1 rounded "
                "to a multiple of 128 (of 8 below 4096); ceiling = fastest SDPA backend there")
TIMING_RULE = ("one untimed probe iteration (validates, counts bytes, builds kernel plans), "
               "then warm-up iterations, then timed iterations: ranks synchronised before "
               "each, CUDA events (perf_counter on CPU), per-iteration max over ranks, "
               "median over iterations; peak = max over ranks of max_memory_allocated over "
               "warm-up + timed iterations (reset per variant; includes the inputs)")

# statuses a record can have; only "ok" carries timings
STATUSES = ("ok", "skipped", "invalid", "unsupported", "oom", "error")


def attention_flops(batch: int, heads: int, length: int, head_dim: int, causal: bool,
                    fwd_bwd: bool = True) -> float:
    """FLOPs of dense attention over ``length`` tokens (the convention of FlashAttention's
    papers and of issue 5): ``4·B·H·L²·D`` forward, halved for causal, ×3.5 for fwd+bwd."""
    fwd = 4.0 * batch * heads * length * length * head_dim
    if causal:
        fwd /= 2
    return fwd * 3.5 if fwd_bwd else fwd


def equal_flops_length(length: int, world: int) -> int:
    """Single-GPU length whose attention FLOPs equal one GPU's share of ``length`` on
    ``world`` GPUs: ``L/sqrt(P)`` (FLOPs grow as L²), rounded so kernels get tidy shapes."""
    exact = length / math.sqrt(world)
    step = 128 if exact >= 4096 else 8
    return max(step, int(round(exact / step)) * step)


def human_length(n: int) -> str:
    """32768 -> '32K', 1048576 -> '1M', 300 -> '300'."""
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n % (1 << 10) == 0:
        return f"{n >> 10}K"
    return str(n)


def problem_key(rec: dict) -> tuple:
    """Records with the same key are compared with each other (same problem)."""
    return (rec["L"], rec["hkv"], rec["causal"])


def _ok(rec: dict) -> bool:
    return rec.get("status") == "ok" and (rec.get("tflops_per_gpu") or 0) > 0


def _best(records: Iterable[dict]) -> dict | None:
    ok = [r for r in records if _ok(r)]
    return max(ok, key=lambda r: r["tflops_per_gpu"]) if ok else None


def derive(records: list[dict]) -> list[dict]:
    """Fill in ``pct_of_ceiling`` and ``ratio_to_best_peer`` on every ok record (in place)
    and return one summary row per problem."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault(problem_key(rec), []).append(rec)
    summary = []
    for key, recs in groups.items():
        ceiling = _best(r for r in recs if r["kind"] == "ceiling")
        peer = _best(r for r in recs if r["kind"] == "peer")
        ours = _best(r for r in recs if r["kind"] == "seqpar")
        for rec in recs:
            rec["ceiling_tflops"] = ceiling["tflops_per_gpu"] if ceiling else None
            rec["best_peer"] = peer["name"] if peer else None
            rec["best_peer_tflops"] = peer["tflops_per_gpu"] if peer else None
            rec["pct_of_ceiling"] = (100.0 * rec["tflops_per_gpu"] / ceiling["tflops_per_gpu"]
                                     if ceiling and _ok(rec) else None)
            rec["ratio_to_best_peer"] = (rec["tflops_per_gpu"] / peer["tflops_per_gpu"]
                                         if peer and _ok(rec) else None)
        summary.append({
            "L": key[0], "hkv": key[1], "causal": key[2],
            "ceiling": _brief(ceiling), "best_peer": _brief(peer), "best_seqpar": _brief(ours),
            "best_seqpar_pct_of_ceiling": ours["pct_of_ceiling"] if ours else None,
            "best_seqpar_vs_best_peer": ours["ratio_to_best_peer"] if ours else None,
        })
    return summary


def _brief(rec: dict | None) -> dict | None:
    if rec is None:
        return None
    return {k: rec.get(k) for k in ("name", "tflops_per_gpu", "time_ms", "peak_gib", "L1")}


def _fmt(x, spec: str, missing: str = "-") -> str:
    if x is None:
        return missing
    if spec == ".1f" and 0 < abs(x) < 0.1:  # CPU smoke runs: keep 3 significant digits
        return format(x, ".3g")
    return format(x, spec)


def _check_cell(rec: dict) -> str:
    check = rec.get("check") or {}
    if "rel_err" in check:
        return f"{check['rel_err']:.1e}" + ("" if check.get("ok") else " FAIL")
    return "-"


def _title(key: tuple, recs: list[dict], meta: dict) -> str:
    length, hkv, causal = key
    r0 = recs[0]
    ceiling = _best(r for r in recs if r["kind"] == "ceiling")
    ceil_txt = "no ceiling measured"
    if ceiling:
        ceil_txt = (f"ceiling {_fmt(ceiling['tflops_per_gpu'], '.1f')} TFLOP/s "
                    f"({ceiling['name']}, 1 device, L1={ceiling.get('L1')})")
    short = human_length(length)
    shown = f"L={length}" + (f" ({short})" if short != str(length) else "")
    return (f"{shown}  B={r0['batch']} Hq={r0['hq']} Hkv={hkv} "
            f"D={r0['d']} {r0['dtype']}  {'causal' if causal else 'full'}  "
            f"P={meta.get('world_size', r0.get('world_size'))}  |  {ceil_txt}"
            + kernel_note(key, meta))


def kernel_note(key: tuple, meta: dict) -> str:
    """``"  |  seqpar kernels: cudnn"``: the block kernels seqpar's selector chose for this
    problem (``meta["kernels"]``; empty for files written before it was recorded)."""
    for entry in meta.get("kernels") or []:
        if (entry.get("L"), entry.get("hkv"), entry.get("causal")) == tuple(key):
            names = sorted({c["kernel"] for c in entry.get("choices", [])})
            if names:
                return "  |  seqpar kernels: " + ", ".join(names)
    return ""


COLUMNS = ("variant", "ms", "TFLOP/s/GPU", "% ceiling", "peak GiB", "x best peer",
           "MiB sent/rank", "check rel err")


def _row(rec: dict) -> list[str]:
    sent = rec.get("bytes_sent_per_rank")
    return [rec["name"], _fmt(rec.get("time_ms"), ".2f"), _fmt(rec.get("tflops_per_gpu"), ".1f"),
            _fmt(rec.get("pct_of_ceiling"), ".1f"), _fmt(rec.get("peak_gib"), ".2f"),
            _fmt(rec.get("ratio_to_best_peer"), ".2f"),
            _fmt(None if sent is None else sent / 2**20, ".1f"), _check_cell(rec)]


PROFILE_COLUMNS = ("profiled (rank 0)", "span ms", "attention", "copy", "elementwise/other",
                   "comm (all)", "comm exposed", "idle", "largest non-attention kernel")


def _profile_rows(recs: list[dict]) -> list[list[str]]:
    """Rank 0's profiled iteration per variant: union ms of each kernel category."""
    rows = []
    for rec in recs:
        prof = rec.get("profile") or {}
        if "span_ms" not in prof:
            continue
        cats = prof.get("by_category_ms", {})
        glue = [t for t in prof.get("top", [])
                if t.get("category") not in ("attention", "comm")]
        top = "-"
        if glue:
            top = f"{glue[0]['name'][:48]} ({glue[0]['ms']:.2f} ms x{glue[0]['count']})"
        rows.append([rec["name"], _fmt(prof["span_ms"], ".2f")]
                    + [_fmt(cats.get(c, 0.0), ".2f") for c in
                       ("attention", "copy", "elementwise/other", "comm")]
                    + [_fmt(prof.get("exposed_comm_ms"), ".2f"), _fmt(prof.get("idle_ms"), ".2f"),
                       top])
    return rows


def _grid(columns: tuple, rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return (["| " + " | ".join(columns) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
                + ["| " + " | ".join(r) + " |" for r in rows])
    if not rows:
        return []
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    return ["  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i])
                      for i, v in enumerate(r)) for r in [list(columns), *rows]]


def format_table(records: list[dict], meta: dict, markdown: bool = False,
                 reason_width: int = 110) -> str:
    """One block per problem: ok rows as a table, then what was skipped or failed and why."""
    derive(records)
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault(problem_key(rec), []).append(rec)
    out: list[str] = []
    order = {"ceiling": 0, "seqpar": 1, "peer": 2}
    for key in sorted(groups, key=lambda k: (k[0], -k[1], not k[2])):
        recs = groups[key]
        ok = sorted((r for r in recs if _ok(r)), key=lambda r: order.get(r["kind"], 3))
        bad = [r for r in recs if not _ok(r)]
        out.append(("### " if markdown else "== ") + _title(key, recs, meta))
        rows = [_row(r) for r in ok]
        out += _grid(COLUMNS, rows, markdown)
        prof_rows = _profile_rows(ok)
        if prof_rows:
            out.append("")
            out += _grid(PROFILE_COLUMNS, prof_rows, markdown)
        for r in bad:
            reason = " ".join(str(r.get("reason") or "").split())
            if len(reason) > reason_width:
                reason = reason[: reason_width - 3] + "..."
            out.append(f"{'- ' if markdown else '  '}{r['name']}: {r['status']}: {reason}")
        out.append("")
    return "\n".join(out)


SCALING_COLUMNS = ("L", "Hkv", "mask", "GPUs", "run", "best seqpar", "TFLOP/s/GPU", "% ceiling",
                   "peak GiB", "best peer", "peer TFLOP/s/GPU", "peer peak GiB", "x peer")


def scaling_table(runs: list[tuple[str, dict, list[dict]]], markdown: bool = True) -> str:
    """One row per (problem, world size) over several bench files: how the best seqpar
    variant and the best peer scale from 2 to 4 to 8 GPUs at the same total length."""
    rows = []
    for label, meta, records in runs:
        derive(records)
        groups: dict[tuple, list[dict]] = {}
        for rec in records:
            groups.setdefault(problem_key(rec), []).append(rec)
        for (length, hkv, causal), recs in groups.items():
            ours = _best(r for r in recs if r["kind"] == "seqpar")
            peer = _best(r for r in recs if r["kind"] == "peer")
            if ours is None and peer is None:
                continue
            world = meta.get("world_size", recs[0].get("world_size"))
            rows.append(((length, -hkv, not causal, world), [
                human_length(length), str(hkv), "causal" if causal else "full", str(world),
                label,
                ours["name"] if ours else "-", _fmt(ours and ours["tflops_per_gpu"], ".1f"),
                _fmt(ours and ours.get("pct_of_ceiling"), ".1f"),
                _fmt(ours and ours.get("peak_gib"), ".2f"),
                peer["name"] if peer else "-", _fmt(peer and peer["tflops_per_gpu"], ".1f"),
                _fmt(peer and peer.get("peak_gib"), ".2f"),
                _fmt(ours and ours.get("ratio_to_best_peer"), ".2f")]))
    rows.sort(key=lambda r: r[0])
    return "\n".join(_grid(SCALING_COLUMNS, [r for _, r in rows], markdown))


def write_json(path: str, meta: dict, records: list[dict]) -> None:
    """Write atomically (tmp + rename) so a run killed mid-write leaves the last good file."""
    summary = derive(records)
    data = {"meta": meta, "summary": summary, "results": records}
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """``seqpar bench report RESULTS.json [--markdown] [--plot PNG]``."""
    parser = argparse.ArgumentParser(prog="seqpar bench report",
                                     description="Print the table of a bench JSON file.")
    parser.add_argument("json", nargs="+", help="file(s) written by `seqpar bench attention`")
    parser.add_argument("--markdown", action="store_true", help="GitHub markdown tables")
    parser.add_argument("--plot", default=None, help="also write this PNG (needs matplotlib)")
    parser.add_argument("--scaling", action="store_true",
                        help="one table of the best seqpar variant and the best peer per "
                             "problem and GPU count, over all the files given")
    args = parser.parse_args(argv)
    runs = []
    for path in args.json:
        with open(path) as fh:
            data = json.load(fh)
        label = os.path.basename(os.path.dirname(os.path.abspath(path)))
        runs.append((label, data.get("meta", {}), data.get("results", [])))
    if args.scaling:
        print(scaling_table(runs, markdown=args.markdown))
        return 0
    for _, meta, records in runs:
        print(format_table(records, meta, markdown=args.markdown))
    if args.plot:
        from .plot import save_plot

        _, meta, records = runs[0]
        if not save_plot(records, meta, args.plot):
            print("matplotlib not importable: no plot written")
    return 0
