"""seqpar's own strategies: every strategy x layout (or ``--pairs``), hybrid per mesh shape.

Each rank holds the tokens its layout gives it, runs ``seqpar.attention`` fwd+bwd,
and returns its output rows for the numerics check; its collectives report bytes
to ``seqpar.comm``. Variants whose causal plan would launch a huge number of tiny
kernels (striped with small blocks) or whose scores cannot fit (rsa) are skipped
with the reason, decided identically on every rank.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import NoReturn

import torch

import seqpar

from ...comm import hybrid_mesh
from ...layout import Layout, merge_runs
from ..options import int_list, names, parse_layout
from ..outcome import classify
from ..problem import Problem, Variant
from .base import Built, RunContext, Runner


def hybrid_shape(world: int, ulysses: int | None = None) -> tuple[int, int]:
    """(U, R) of the hybrid mesh: ``ulysses`` if given, else the smallest divisor of P that is
    at least sqrt(P) (P=4 -> 2x2, P=8 -> 4x2, P=2 -> 2x1), keeping the all-to-all the larger
    (intra-node) dim."""
    if ulysses is None:
        ulysses = next(u for u in range(1, world + 1) if world % u == 0 and u * u >= world)
    if ulysses < 1 or world % ulysses:
        raise ValueError(f"--hybrid-ulysses {ulysses} does not divide the world size {world}")
    return ulysses, world // ulysses


def hybrid_sizes(world: int, ulysses: list[int] | None) -> list[int]:
    """The U values of the hybrid meshes to run (``--hybrid-ulysses``, else the default)."""
    return list(ulysses) if ulysses else [hybrid_shape(world)[0]]


def _run_count(segments: list[tuple[int, int]]) -> int:
    return len(merge_runs(segments))


def plan_pairs(layout: Layout, strategy: str, world: int, length: int, ulysses: int = 1) -> int:
    """Upper bound on (q run, kv run) pairs one rank's causal plan holds per step.

    Each pair is one or more kernel launches; striped with small blocks makes
    this quadratic in L/P, which is a Python loop of millions of tiny kernels.
    """
    if strategy not in ("ring", "allgather", "hybrid"):
        return 1
    try:
        if strategy == "hybrid":  # ring member r holds slices r*U .. r*U+U-1
            runs = [_run_count([s for u in range(ulysses)
                                  for s in layout.segments(r * ulysses + u, world, length)])
                    for r in range(world // ulysses)]
            return max(runs) ** 2
        runs = [_run_count(layout.segments(r, world, length)) for r in range(world)]
        if strategy == "ring":
            return max(runs) ** 2
        every = [s for r in range(world) for s in layout.segments(r, world, length)]
        return max(runs) * _run_count(every)
    except ValueError:
        return 0  # seqpar.attention reports the bad length itself


class SeqparRunner(Runner):
    """``<strategy>/<layout>`` and ``hybrid-u<U>r<R>/<layout>``: seqpar.attention."""

    name = "seqpar"
    kind = "seqpar"
    counts_bytes = True

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, device: str) -> None:
        parser.add_argument("--strategies", type=names, default=",".join(seqpar.STRATEGIES))
        parser.add_argument("--layouts", type=names, default=",".join(seqpar.LAYOUT_NAMES),
                            help="layout names; striped:B = striped in blocks of B tokens")
        parser.add_argument("--pairs", type=names, default=None,
                            help="explicit strategy/layout pairs, e.g. "
                                 "ring/zigzag,ulysses/contiguous "
                                 "(instead of --strategies x --layouts)")
        parser.add_argument("--hybrid-ulysses", type=int_list, default=None,
                            help="ulysses size(s) U of the U x R mesh for strategy 'hybrid', "
                                 "e.g. 2,4 on 8 GPUs runs 2x4 and 4x2 (default: the smallest "
                                 "divisor of P that is >= sqrt(P))")
        parser.add_argument("--max-plan-pairs", type=int, default=256,
                            help="skip causal ring/allgather variants whose plan would pair "
                                 "more (q run, kv run) segments than this per step (one kernel "
                                 "launch each)")

    @classmethod
    def check_arguments(cls, args: argparse.Namespace,
                        error: Callable[[str], NoReturn]) -> None:
        if args.pairs is not None:
            try:
                args.pairs = [tuple(x.split("/", 1)) for x in args.pairs]
                args.strategies = list(dict.fromkeys(s for s, _ in args.pairs))
                args.layouts = list(dict.fromkeys(lay for _, lay in args.pairs))
            except ValueError:
                error(f"--pairs wants strategy/layout items, got {args.pairs}")
        bad = [s for s in args.strategies if s not in seqpar.STRATEGIES]
        if bad:
            error(f"unknown strategies {bad}; choose from {seqpar.STRATEGIES}")
        for name in args.layouts:
            try:
                parse_layout(name)
            except ValueError as exc:
                error(str(exc))

    @classmethod
    def variants(cls, args: argparse.Namespace, world: int) -> tuple[list[Variant],
                                                                      list[Variant]]:
        pairs = getattr(args, "pairs", None) or [(s, lay) for s in args.strategies
                                                 for lay in args.layouts]
        ours = []
        for strategy, layout in pairs:
            if strategy != "hybrid":
                ours.append(Variant("seqpar", f"{strategy}/{layout}", strategy=strategy,
                                    layout=layout, runner=cls.name))
                continue
            for u in hybrid_sizes(world, args.hybrid_ulysses):
                label = "hybrid"
                with contextlib.suppress(ValueError):
                    label = "hybrid-u{}r{}".format(*hybrid_shape(world, u))
                ours.append(Variant("seqpar", f"{label}/{layout}", strategy=strategy,
                                    layout=layout, ulysses=u, runner=cls.name))
        return ours, []

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        # 2-D ("ulysses", "ring") DeviceMeshes for strategy "hybrid", by U; why one is missing
        self.hybrid_meshes: dict[int, object] = {}
        self.hybrid_errors: dict[int, str] = {}

    def prepare(self) -> None:
        args, d = self.ctx.args, self.ctx.d
        if "hybrid" not in args.strategies:
            return
        for u in hybrid_sizes(d.world, args.hybrid_ulysses):
            try:
                self.hybrid_meshes[u] = hybrid_mesh(u, d.world // u, d.device.type)
            except Exception as exc:  # noqa: BLE001 - the hybrid rows record why
                self.hybrid_errors[u] = f"no ('ulysses', 'ring') mesh: {classify(exc)[1]}"

    def skip(self, p: Problem, v: Variant) -> tuple[str, str] | None:
        d, args = self.ctx.d, self.ctx.args
        if p.causal and d.world > 1:
            ulysses = v.ulysses if v.strategy == "hybrid" and v.ulysses else 1
            pairs = plan_pairs(parse_layout(v.layout), v.strategy, d.world, p.length, ulysses)
            if pairs > args.max_plan_pairs:
                return ("skipped", f"causal {v.strategy} plan with layout {v.layout!r} pairs up "
                        f"to {pairs} (q run, kv run) segments per step (> --max-plan-pairs "
                        f"{args.max_plan_pairs}); each is a kernel launch from a Python loop")
        if v.strategy == "rsa" and d.cuda:
            ls = p.length // d.world
            est = 6 * d.world * p.batch * p.hq * ls * ls * 4
            total = torch.cuda.get_device_properties(d.device).total_memory
            if est > 0.9 * total:
                return ("skipped", f"rsa keeps fp32 L/P x L scores and probabilities: "
                        f"~{est / 2**30:.0f} GiB estimated > {total / 2**30:.0f} GiB per device")
        return None

    def setup(self, p: Problem, v: Variant) -> Built:
        d = self.ctx.d
        layout = parse_layout(v.layout)
        group = d.group
        if v.strategy == "hybrid":
            if v.ulysses not in self.hybrid_meshes:
                raise ValueError(self.hybrid_errors.get(v.ulysses, "hybrid mesh not created"))
            group = self.hybrid_meshes[v.ulysses]
        # which global tokens this rank holds (for a hybrid mesh: slice r*U+u)
        positions = seqpar.position_ids(p.length, group=group, layout=layout, device=d.device)
        q, k, v_, dout = self.ctx.inputs(p, positions)
        q, k, v_ = (t.requires_grad_() for t in (q, k, v_))

        def run(check: bool) -> torch.Tensor:
            out = seqpar.attention(q, k, v_, strategy=v.strategy, group=group,
                                   causal=p.causal, layout=layout, check=check)
            torch.autograd.grad(out, (q, k, v_), dout)
            return out.detach()

        return Built(probe=lambda: run(True), step=lambda: run(False), positions=positions)
