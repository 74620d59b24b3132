"""``--profile-step N``: where one training step's time goes.

Why: issue 17's targets are a whole step, not attention alone, and the levers
(selective checkpointing, compiled token-wise work, overlapped communication, a
fused optimizer) each remove one part of it. The split answers which part is
left: ``recompute`` (kernels launched inside checkpoint recomputation),
``optimizer`` (clipping + AdamW), ``attention``, ``gemm``, ``elementwise_norm``
(everything else on the compute streams: norms, RoPE, SwiGLU, casts, the loss's
softmax), ``exposed_comm`` (communication with no computation beside it) and
``idle`` (nothing on the device: host overhead, syncs).

Every instant of the step belongs to exactly one part, the first active one in
that order (so the parts sum to the step's span and overlapped communication is
not counted). Recompute and optimizer are told by the profiler ranges
:data:`~seqpar.memory.checkpointing.RECOMPUTE_RANGE` and
:data:`~seqpar.train.step.OPTIMIZER_RANGE` (``seqpar.train.step``) around them:
a CUDA kernel belongs to a range when the op that launched it (the
profiler's linked correlation id, as ``torch.profiler`` links kernels to ops)
started inside it; a kernel with no such op is placed by its own start. The
rest is told by kernel names.
On CPU the host ops stand in for kernels (the tests exercise the code path).
``seqpar.bench.profile`` does the same for the attention benchmark (no ranges).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from ..bench.profile import CATEGORIES as _BENCH_CATEGORIES
from ..bench.profile import _union_ms
from ..memory.checkpointing import RECOMPUTE_RANGE
from .step import OPTIMIZER_RANGE

#: the parts, in the order that decides an instant where several are active
PARTS = ("recompute", "optimizer", "attention", "gemm", "elementwise_norm", "exposed_comm",
         "idle")
_COMM = dict(_BENCH_CATEGORIES)["comm"]
_ATTENTION = re.compile(r"flash|fmha|sdpa|scaled_dot_product|cudnn.*(attn|attention|sdp)|"
                        r"attention")
_GEMM = re.compile(r"gemm|cutlass|nvjet|sm90_xmma|sm80_xmma|matmul|\baten::mm\b|addmm|"
                   r"\baten::bmm\b|aten::linear|cublas")
_RANGES = {RECOMPUTE_RANGE: "recompute", OPTIMIZER_RANGE: "optimizer"}
_RUNTIME = re.compile(r"cuda[A-Z]|cu[A-Z]")


def kernel_part(name: str) -> str:
    """The part a kernel (or CPU op) belongs to by its name alone."""
    low = name.lower()
    if _COMM.search(low):
        return "exposed_comm"
    if _ATTENTION.search(low):
        return "attention"
    if _GEMM.search(low):
        return "gemm"
    return "elementwise_norm"


def _inside(t: float, ranges: list[tuple[float, float]]) -> bool:
    return any(s <= t <= e for s, e in ranges)


def split(spans: list[tuple[str, float, float, float]],
          ranges: dict[str, list[tuple[float, float]]]) -> dict:
    """``spans``: ``(name, start_ms, end_ms, launch_ms)`` of device activity; ``ranges``:
    ``part -> [(start_ms, end_ms)]`` host ranges (recompute, optimizer). Returns the
    parts in ms (summing to the span), their fractions and the busy unions."""
    if not spans:
        return {"span_ms": 0.0, "ms": dict.fromkeys(PARTS, 0.0),
                "fraction": dict.fromkeys(PARTS, 0.0)}
    by_part: dict[str, list[tuple[float, float]]] = {p: [] for p in PARTS}
    for name, start, end, launch in spans:
        part = kernel_part(name)
        if part != "exposed_comm":  # communication stays communication wherever launched
            for rng_part, rng in ranges.items():
                if _inside(launch, rng):
                    part = rng_part
                    break
        by_part[part].append((start, end))
    t0 = min(s for _, s, _, _ in spans)
    t1 = max(e for _, _, e, _ in spans)
    # sweep: each elementary segment goes to the first active part in PARTS order
    edges = []
    for i, part in enumerate(PARTS[:-1]):
        for s, e in by_part[part]:
            edges += [(s, 1, i), (e, -1, i)]
    edges.sort(key=lambda x: (x[0], x[1]))
    active = [0] * (len(PARTS) - 1)
    ms = dict.fromkeys(PARTS, 0.0)
    prev = t0
    for t, delta, i in edges:
        if t > prev:
            first = next((j for j, n in enumerate(active) if n > 0), len(PARTS) - 1)
            ms[PARTS[first]] += t - prev
            prev = t
        active[i] += delta
    span = t1 - t0
    comm = by_part["exposed_comm"]
    return {"span_ms": span, "ms": ms,
            "fraction": {p: (v / span if span else 0.0) for p, v in ms.items()},
            "comm_total_ms": _union_ms(comm), "kernels": len(spans)}


def _collect(prof, cuda: bool):
    """(spans, ranges) from a finished profiler (see :func:`split`)."""
    cpu_t = torch.autograd.DeviceType.CPU
    dev_t = torch.autograd.DeviceType.CUDA if cuda else cpu_t
    events = list(prof.profiler.kineto_results.events())
    ranges: dict[str, list[tuple[float, float]]] = {p: [] for p in _RANGES.values()}
    # CPU ops by their correlation id: a kernel's linked_correlation_id() names the op that
    # launched it (as torch.profiler links them); runtime calls (cudaLaunchKernel...) are
    # left out, their CUPTI ids are another number space
    ops: dict[int, float] = {}
    for e in events:
        if e.device_type() != cpu_t:
            continue
        if e.name() in _RANGES:
            s = e.start_ns() / 1e6
            ranges[_RANGES[e.name()]].append((s, s + e.duration_ns() / 1e6))
        elif cuda and e.correlation_id() and not _RUNTIME.match(e.name()):
            ops.setdefault(e.correlation_id(), e.start_ns() / 1e6)
    spans = []
    for e in events:
        if e.device_type() != dev_t or e.duration_ns() <= 0:
            continue
        name = e.name()
        if not cuda and (name in _RANGES or e.is_user_annotation()
                         or name.startswith("ProfilerStep")):
            continue
        start = e.start_ns() / 1e6
        at = ops.get(e.linked_correlation_id(), start) if cuda else start
        spans.append((name, start, start + e.duration_ns() / 1e6, at))
    return spans, ranges


@contextmanager
def profiled(result: dict, cuda: bool):
    """Profile the body; on exit ``result`` holds its :func:`split` (plus ``device``)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize()
    spans, ranges = _collect(prof, cuda)
    result.update(split(spans, ranges))
    result["device"] = "cuda" if cuda else "cpu"


def describe(result: dict) -> str:
    """One line: ``profile: step 412 ms | recompute 22.1% | ...``."""
    parts = " | ".join(f"{p} {100 * result['fraction'][p]:.1f}%" for p in PARTS)
    return f"profile ({result.get('device', '?')}): span {result['span_ms']:.1f} ms | {parts}"
