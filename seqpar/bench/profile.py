"""Where one benchmark iteration's time goes, from a torch.profiler trace.

Why: a throughput gap to the ceiling can come from the attention kernels
themselves (smaller blocks run slower), from memory-bound glue (fp32 merges,
packing copies), or from communication that is not hidden. Kernel time per
category, and the time in which *only* communication (or nothing) runs, tells
these apart; the bytes counter alone cannot.

Categories are unions of intervals (not sums), so nested CPU ops and kernels on
several streams are not counted twice. On CUDA only device activity counts
(kernels, memcpy, memset); on CPU the host ops stand in for it, which keeps the
code path exercised by the CPU tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: (category, pattern over lower-cased kernel/op names), first match wins
CATEGORIES = (
    ("comm", re.compile(r"nccl|gloo|c10d|all_to_all|alltoall|allgather|all_gather|"
                        r"reduce_scatter|sendrecv|isend|irecv")),
    ("attention", re.compile(r"sdpa|fmha|flash|cudnn|attention|attn|fprop|dgrad")),
    ("copy", re.compile(r"copy|memcpy|memset|fill|cat|index|gather|scatter|stack|"
                        r"clone|contiguous")),
)
OTHER = "elementwise/other"


def category(name: str) -> str:
    """The category of one kernel or op name."""
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if pattern.search(low):
            return cat
    return OTHER


@dataclass
class Span:
    name: str
    start: float  # ms from the first event
    end: float


def _union_ms(spans: list[tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _intersect_ms(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Length of (union a) ∩ (union b): |A| + |B| - |A ∪ B|."""
    return _union_ms(a) + _union_ms(b) - _union_ms(a + b)


def breakdown(spans: list[Span], top: int = 8) -> dict:
    """Summary of a list of device (or host) activity spans of one iteration."""
    if not spans:
        return {"span_ms": 0.0, "by_category_ms": {}, "top": []}
    t0 = min(s.start for s in spans)
    t1 = max(s.end for s in spans)
    by_cat: dict[str, list[tuple[float, float]]] = {}
    totals: dict[str, list] = {}
    for s in spans:
        by_cat.setdefault(category(s.name), []).append((s.start, s.end))
        entry = totals.setdefault(s.name, [0.0, 0])
        entry[0] += s.end - s.start
        entry[1] += 1
    comm = by_cat.get("comm", [])
    compute = [iv for cat, ivs in by_cat.items() if cat != "comm" for iv in ivs]
    busy = _union_ms(comm + compute)
    compute_busy = _union_ms(compute)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "span_ms": t1 - t0,
        "by_category_ms": {cat: _union_ms(ivs) for cat, ivs in sorted(by_cat.items())},
        "compute_busy_ms": compute_busy,
        # communication with no computation beside it: what overlap did not hide
        "exposed_comm_ms": _union_ms(comm) - _intersect_ms(comm, compute),
        "idle_ms": (t1 - t0) - busy,
        "top": [{"name": name[:120], "category": category(name), "ms": ms, "count": n}
                for name, (ms, n) in ranked],
    }


def _spans(prof, cuda: bool) -> list[Span]:
    wanted = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    out = []
    for e in prof.profiler.kineto_results.events():
        if e.device_type() != wanted or e.duration_ns() <= 0:
            continue
        if not cuda and (e.is_user_annotation() or e.name().startswith("ProfilerStep")):
            continue
        start = e.start_ns() / 1e6
        out.append(Span(e.name(), start, start + e.duration_ns() / 1e6))
    if out:
        t0 = min(s.start for s in out)
        out = [Span(s.name, s.start - t0, s.end - t0) for s in out]
    return out


def profile_step(step: Callable[[], object], cuda: bool) -> dict:
    """Run ``step`` once under the profiler (after the caller's warm-up) and summarise it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    result = breakdown(_spans(prof, cuda))
    result["device"] = "cuda" if cuda else "cpu"
    return result
