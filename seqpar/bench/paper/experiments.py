"""The paper's experiments over P and methods, each a list of JSON-ready rows.

1. ``max_batch``: the largest global batch at length ``L`` (the paper: 512) for each
   method and P, by search until out of memory;
2. ``max_length``: the largest length at a fixed global batch (the paper: 64);
3. ``weak_scaling``: one trial per P with the batch grown with P (``batch×P``), the
   length grown with P (``length×P``), and a common configuration for every P
   (``common``): per-GPU peak memory and tokens/s (the paper's Table 4);
4. ``linformer``: the largest length of Linformer attention under SP vs one device,
   through a model factory and a wiring hook (:data:`~.trial.Factory`,
   :data:`~.trial.Wire`); without them the experiment says ``needs linformer``.

Every rank runs the same loops; each trial's outcome is agreed, and the time
budget is rank 0's clock (:func:`seqpar.bench.agree.from_rank0`), so every rank
takes the same path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..agree import from_rank0
from .memory_cap import GIB
from .search import find_max
from .trial import SP_METHODS, Factory, TrialContext, TrialResult, TrialSpec, Wire, run_trial

NEEDS_LINFORMER = "needs linformer"


@dataclass(frozen=True)
class Plan:
    """What to run (the CLI fills it; ``--tiny`` swaps in tiny shapes)."""

    models: tuple[str, ...]
    gpus: tuple[int, ...]
    methods: tuple[str, ...]
    experiments: tuple[int, ...] = (1, 2, 3, 4)
    batch_len: int = 512  # experiment 1's length
    batch_start: int = 1  # experiment 1's search starts here (doubling)
    fixed_batch: int = 64  # experiment 2's batch
    len_granule: int = 64  # lengths searched in multiples of len_granule * P
    weak_batch: int = 8  # experiment 3: batch and length at P = 1
    weak_len: int = 512
    max_batch: int = 1 << 14
    max_len: int = 1 << 22
    max_trials: int = 10
    search_seconds: float = 0.0  # 0: no per-search limit
    max_minutes: float = 0.0  # 0: no overall limit
    steps: int = 2
    checkpointing: bool = True
    dtype: str = "fp32"
    vocab_size: int = 30522
    linformer_k: int = 256
    linformer_batch: int = 1  # experiment 4's batch (its target counts tokens per sequence)


class Clock:
    """The overall budget and one search's budget, decided on rank 0's clock."""

    def __init__(self, ctx: TrialContext, plan: Plan):
        self.ctx, self.plan = ctx, plan
        self.t0 = time.monotonic()
        self.search_t0 = self.t0

    def start_search(self) -> None:
        self.search_t0 = time.monotonic()

    def out_of_time(self, search: bool = True) -> bool:
        now = time.monotonic()
        late = bool(self.plan.max_minutes) and now - self.t0 > 60 * self.plan.max_minutes
        if search and self.plan.search_seconds:
            late = late or now - self.search_t0 > self.plan.search_seconds
        return from_rank0(self.ctx.d, late)


def _trial_dict(x: int, r: TrialResult) -> dict:
    return {"x": x, "status": r.status, "peak_gib": r.peak_bytes / GIB,
            "tokens_per_s": r.tokens_per_s, "reason": r.reason[:300]}


def _search_row(ctx: TrialContext, clock: Clock, base: TrialSpec, what: str, start: int,
                granule: int, limit: int, factory: Factory | None = None,
                wire: Wire | None = None) -> dict:
    """Search ``what`` ("batch" or "seq_len") of ``base`` until out of memory."""
    plan = clock.plan
    trials: list[dict] = []
    first = run_trial(replace(base, **{what: start}), ctx, factory, wire) \
        if not clock.out_of_time(search=False) else None
    row = {"model": base.model, "method": base.method, "P": base.gpus,
           "batch": base.batch, "seq_len": base.seq_len, "searched": what}
    if first is None:
        return {**row, "status": "skipped", "reason": "time budget (--max-minutes) used",
                "max": None}
    if first.status in ("invalid", "error"):
        return {**row, "status": first.status, "reason": first.reason, "max": None}
    seen = {start: first}
    clock.start_search()

    def fits(x: int) -> bool:
        r = seen.get(x) or run_trial(replace(base, **{what: x}), ctx, factory, wire)
        seen[x] = r
        trials.append(_trial_dict(x, r))
        if r.status not in ("ok", "oom"):  # an error is not "out of memory": stop here
            raise _Stop(r)
        return r.ok

    try:
        res = find_max(fits, start, granule=granule, limit=limit,
                       max_trials=plan.max_trials, out_of_time=clock.out_of_time)
    except _Stop as stop:
        return {**row, "status": stop.result.status, "reason": stop.result.reason,
                "max": None, "trials": trials}
    best = seen.get(res.best)
    return {**row, "status": "ok" if res.best else "oom", "max": res.best or None,
            "exact": res.exact, "stopped": res.stopped, "first_fail": res.first_fail,
            "reason": "" if res.best else f"{what}={start} does not fit",
            "peak_gib_at_max": best.peak_bytes / GIB if best else None, "trials": trials}


class _Stop(Exception):
    def __init__(self, result: TrialResult):
        super().__init__(result.reason)
        self.result = result


def _base(plan: Plan, model: str, method: str, p: int, batch: int, seq_len: int) -> TrialSpec:
    return TrialSpec(model=model, method=method, gpus=p, batch=batch, seq_len=seq_len,
                     steps=plan.steps, checkpointing=plan.checkpointing, dtype=plan.dtype,
                     vocab_size=plan.vocab_size)


def same_at_one(plan: Plan, method: str) -> str | None:
    """At P = 1 every SP method is the same one-device model, and so are tp and tp-sp:
    the method whose row a P = 1 row copies (None: this one runs)."""
    family = [m for m in plan.methods if (m in SP_METHODS) == (method in SP_METHODS)]
    return None if family[0] == method else family[0]


def _rows(plan: Plan, p: int, make) -> list[dict]:
    """``make(method)`` for each method at P = p; P = 1 copies within a family."""
    rows: dict[str, dict] = {}
    for m in plan.methods:
        twin = same_at_one(plan, m) if p == 1 else None
        rows[m] = ({**rows[twin], "method": m, "same_as": twin} if twin else make(m))
    return list(rows.values())


def max_batch(ctx: TrialContext, clock: Clock, plan: Plan, model: str) -> list[dict]:
    """Experiment 1: the largest batch at ``plan.batch_len`` per (P, method)."""
    return [row for p in plan.gpus for row in _rows(plan, p, lambda m, p=p: _search_row(
        ctx, clock, _base(plan, model, m, p, plan.batch_start, plan.batch_len), "batch",
        plan.batch_start, 1, plan.max_batch))]


def _len_start(plan: Plan, p: int) -> tuple[int, int]:
    granule = plan.len_granule * p
    return granule, granule * math.ceil(plan.batch_len / granule)


def max_length(ctx: TrialContext, clock: Clock, plan: Plan, model: str) -> list[dict]:
    """Experiment 2: the largest length at ``plan.fixed_batch`` per (P, method)."""
    rows = []
    for p in plan.gpus:
        granule, start = _len_start(plan, p)
        rows += _rows(plan, p, lambda m, p=p, g=granule, s=start: _search_row(
            ctx, clock, _base(plan, model, m, p, plan.fixed_batch, s), "seq_len", s, g,
            plan.max_len))
    return rows


def weak_scaling(ctx: TrialContext, clock: Clock, plan: Plan, model: str) -> list[dict]:
    """Experiment 3: one trial per (series, P, method): memory per GPU and tokens/s."""
    rows = []
    series = {"batch×P": lambda p: (plan.weak_batch * p, plan.weak_len),
              "length×P": lambda p: (plan.weak_batch, plan.weak_len * p),
              "common": lambda p: (plan.weak_batch, plan.weak_len)}
    for name, shape in series.items():
        for p in plan.gpus:
            b, length = shape(p)

            def one(m: str, p: int = p, b: int = b, length: int = length,
                    name: str = name) -> dict:
                row = {"series": name, "model": model, "method": m, "P": p, "batch": b,
                       "seq_len": length}
                if clock.out_of_time(search=False):
                    return {**row, "status": "skipped", "reason": "time budget used"}
                r = run_trial(_base(plan, model, m, p, b, length), ctx)
                return {**row, "status": r.status, "reason": r.reason[:300],
                        "peak_gib": r.peak_bytes / GIB if r.ok else None,
                        "tokens_per_s": r.tokens_per_s if r.ok else None,
                        "step_s": r.step_s if r.ok else None}

            rows += _rows(plan, p, one)
    return rows


def linformer(ctx: TrialContext, clock: Clock, plan: Plan, model: str,
              factory: Factory | None, wire: Wire | None) -> dict:
    """Experiment 4: Linformer's largest length under SP on max(P) GPUs vs one device.

    ``factory(spec)`` builds the Linformer model (e.g. ``build_model(model_config(
    spec.model, attention="linformer", linformer_k=k, max_seq_len=spec.seq_len,
    vocab_size=spec.vocab_size))``) and ``wire(model, group, spec)`` parallelizes it
    over the group, returning the gradient sync (None: sum every gradient).
    """
    if factory is None or wire is None:
        return {"model": model, "status": NEEDS_LINFORMER,
                "reason": "Linformer attention is not wired into this build: pass "
                          "factory= and wire= to seqpar.bench.paper.experiments.run "
                          "(docs/paper.md, experiment 4); no number is reported"}
    rows = []
    for p in sorted({1, max(plan.gpus)}):
        granule, start = _len_start(plan, p)
        base = _base(plan, model, "linformer", p, plan.linformer_batch, start)
        rows.append(_search_row(ctx, clock, base, "seq_len", start, granule, plan.max_len,
                                factory, wire))
    one, many = rows[0].get("max"), rows[-1].get("max")
    return {"model": model, "status": "ok", "k": plan.linformer_k, "rows": rows,
            "ratio": many / one if one and many and len(rows) > 1 else None}


def run(ctx: TrialContext, plan: Plan, factory: Factory | None = None,
        wire: Wire | None = None, progress: Callable[[dict], None] | None = None) -> dict:
    """Every experiment of ``plan`` for every model: ``{model: {experiment: rows}}``.

    ``progress(results so far)`` runs after each experiment (rank 0 saves a partial
    JSON with it, so a run cut short still leaves its finished experiments).
    """
    clock = Clock(ctx, plan)
    out: dict = {}
    steps = {1: ("max_batch", max_batch), 2: ("max_length", max_length),
             3: ("weak_scaling", weak_scaling)}
    for model in plan.models:
        res: dict = out.setdefault(model, {})
        for exp in sorted(plan.experiments):
            if exp == 4:
                res["linformer"] = linformer(ctx, clock, plan, model, factory, wire)
            else:
                name, fn = steps[exp]
                res[name] = fn(ctx, clock, plan, model)
            if progress is not None:
                progress(out)
    return out


__all__ = ["NEEDS_LINFORMER", "Plan", "SP_METHODS", "max_batch", "max_length", "run",
           "weak_scaling", "linformer"]
