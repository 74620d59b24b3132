"""How one variant is timed: probe, warm-up, timed iterations, peak memory, profile.

Every rank runs the same collectives in the same order: each iteration is
followed by an agreement on its outcome (``outcome.guarded``), which also lines the ranks
up before the next one, and the timing itself is one CUDA event pair around the
step (``perf_counter`` on CPU) with nothing else inside. ``report.TIMING_RULE``
is the one-line summary written into every JSON file.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from ..comm import count_bytes
from ..utils.memory import peak_bytes, reset_peak
from .agree import all_max, gather_rows
from .check import Reference, check_output
from .launch import Dist
from .outcome import guarded
from .problem import Problem
from .profile import profile_step
from .report import attention_flops
from .runners.base import Built, Runner


def time_once(d: Dist, fn: Callable[[], object]) -> float:
    """Milliseconds of one call: CUDA events around it on GPU, perf_counter on CPU."""
    if d.cuda:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


class Budget:
    """``--max-minutes`` and ``--max-variant-seconds``: what still fits, from rank 0's clock
    and the rate each variant reached at a shorter length."""

    def __init__(self, args: argparse.Namespace, world: int):
        self.args, self.world = args, world
        self.t0 = time.monotonic()
        self.deadline = self.t0 + 60 * args.max_minutes if args.max_minutes else None
        self.rates: dict[tuple, float] = {}  # (variant name, causal) -> last TFLOP/s per GPU

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def predict_seconds(self, p: Problem, name: str) -> float:
        """Expected wall time of a variant from the rate it reached at a shorter length
        (0 when unknown: it runs, and the budget is checked again before the next one)."""
        rate = self.rates.get((name, p.causal))
        if not rate:
            return 0.0
        per_dev = attention_flops(p.batch, p.hq, p.length, p.d, p.causal) / self.world
        iter_s = per_dev / (rate * 1e12)
        warm = self.args.warmup if iter_s < 1.0 else 0
        body = (warm + self.args.iters) * iter_s
        if self.args.max_variant_seconds:
            body = min(body, max(self.args.max_variant_seconds, iter_s))
        return 1.5 * iter_s + body  # probe (plans, first-touch) + warm-up + timed

    def reason(self, predicted: float) -> str | None:
        """Why a variant predicted to take ``predicted`` seconds must not start, or None."""
        if self.deadline is None:
            return None
        now = time.monotonic()
        if now >= self.deadline:
            return f"time budget --max-minutes {self.args.max_minutes:g} used up"
        if now + predicted > self.deadline:
            return (f"time budget: predicted {predicted:.0f} s from its rate at a shorter "
                    f"length, {self.deadline - now:.0f} s left of --max-minutes "
                    f"{self.args.max_minutes:g}")
        return None

    def iterations(self, spent_s: float, iter_s: float, warm_left: int) -> tuple[int, int]:
        """(more warm-up, timed) iterations that fit --max-variant-seconds, given the seconds
        already spent on this variant and the best estimate of one iteration."""
        iters = self.args.iters
        cap = self.args.max_variant_seconds
        if cap and iter_s > 0:
            affordable = int(max(0.0, cap - spent_s) // iter_s)
            if affordable < warm_left + iters:
                iters = max(1, min(iters, affordable))
                warm_left = max(0, min(warm_left, affordable - iters))
        return warm_left, iters


def measure(runner: Runner, built: Built, p: Problem, ref: Reference, rec: dict,
            budget: Budget) -> tuple[str, str]:
    """Probe, check, warm up and time ``built`` into ``rec``; (status, reason)."""
    ctx = runner.ctx
    d, args = ctx.d, ctx.args
    box: dict = {}

    def probe() -> torch.Tensor:
        t = time.perf_counter()
        with count_bytes() as counter:
            out = built.probe()
        if d.cuda:
            torch.cuda.synchronize()
        box.update(seconds=time.perf_counter() - t, counter=counter)
        return out

    out, status, why = guarded(d, probe)
    if status != "ok":
        return status, why
    counter = box["counter"]
    probe_s, sent = all_max(d, [box["seconds"], float(counter.bytes_sent)])
    rec["probe_ms"] = probe_s * 1e3
    if runner.counts_bytes:  # torch's own collectives do not report to seqpar.comm
        rec["bytes_sent_per_rank"] = int(sent)
        rec["bytes_by_kind"] = dict(counter.bytes_by_kind)
        rec["comm_calls"] = dict(counter.calls)
    notes = built.notes()
    rec.update(notes)
    if built.positions is not None:
        check, status, why = guarded(d, functools.partial(
            check_output, d, ctx.dtype, out, built.positions, ref))
        rec["check"] = check if status == "ok" else {"skipped": f"check failed: {why}"}
    out = None  # free the probe's output before peak memory is measured
    reset_peak(d.device)
    # Warm-up: the probe already paid the one-time costs; an iteration of >= 1 s needs
    # no more. The first warm-up also re-estimates one iteration (a cold probe can be
    # far slower), which decides how many iterations fit --max-variant-seconds.
    warm_left = args.warmup if probe_s < 1.0 else 0
    spent, iter_s, warm_done = 0.0, probe_s, 0  # the cap excludes the probe
    if warm_left:
        ms, status, why = guarded(d, lambda: time_once(d, built.step))
        if status != "ok":
            return status, why
        first = all_max(d, [ms])[0] / 1e3
        spent, iter_s, warm_left, warm_done = first, min(probe_s, first), warm_left - 1, 1
    warm_left, iters = budget.iterations(spent, iter_s, warm_left)
    rec["warmup"], rec["iters"] = warm_done + warm_left, iters
    times = []
    for i in range(warm_left + iters):
        ms, status, why = guarded(d, lambda: time_once(d, built.step))
        if status != "ok":
            return status, why
        if i >= warm_left:
            times.append(ms)
    peak = peak_bytes(d.device)
    per_iter = [max(col) for col in zip(*gather_rows(d, times))]
    rec["times_ms"] = per_iter
    rec["time_ms"] = statistics.median(per_iter)
    if peak is not None:
        rec["peak_gib"] = all_max(d, [peak / 2**30])[0]
    if args.profile:
        prof, status, why = guarded(d, lambda: profile_step(built.step, d.cuda))
        if status == "ok":
            spans = gather_rows(d, [prof["span_ms"], prof.get("idle_ms", 0.0),
                                    prof.get("exposed_comm_ms", 0.0)])
            prof["ranks"] = [{"span_ms": a, "idle_ms": b, "exposed_comm_ms": c}
                             for a, b, c in spans]
            rec["profile"] = prof
        else:
            rec["profile"] = {"skipped": f"profile failed: {why}"}
    flops, devices = runner.flops(p, notes)
    rec["flops_total"] = flops
    rec["tflops_per_gpu"] = flops / devices / (rec["time_ms"] * 1e-3) / 1e12
    return "ok", ""
