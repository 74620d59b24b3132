"""The ceiling: plain SDPA fwd+bwd on one device at equal per-device FLOPs.

Every rank runs the single-device problem at ``L1 = L/sqrt(P)`` (``report.CEILING_RULE``)
on its own device, independently seeded; the fastest backend is the ceiling the
report measures every variant against.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import NoReturn

from ..options import names
from ..problem import Problem, Variant
from ..report import attention_flops, equal_flops_length
from ..sdpa import SDPA_BACKENDS, SdpaStep, check_backends, sdpa_backend
from .base import Built, Runner

DEFAULT_BACKENDS = {"cuda": "cudnn,flash", "cpu": "default"}


class SdpaCeiling(Runner):
    """``sdpa-1dev/<backend>``: one device, plain SDPA, the same per-device FLOPs."""

    name = "sdpa-1dev"
    kind = "ceiling"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, device: str) -> None:
        parser.add_argument("--no-ceiling", action="store_true",
                            help="skip the single-device ceiling")
        parser.add_argument("--ceiling-backends", type=names, default=DEFAULT_BACKENDS[device],
                            help=f"SDPA backends for the ceiling, from {SDPA_BACKENDS}")

    @classmethod
    def check_arguments(cls, args: argparse.Namespace,
                        error: Callable[[str], NoReturn]) -> None:
        check_backends(args.ceiling_backends, error)

    @classmethod
    def variants(cls, args: argparse.Namespace, world: int) -> tuple[list[Variant],
                                                                      list[Variant]]:
        if args.no_ceiling:
            return [], []
        out = [Variant("ceiling", f"sdpa-1dev/{backend}", backend=backend, runner=cls.name)
               for backend in args.ceiling_backends]
        return out[:1], out[1:]

    def setup(self, p: Problem, v: Variant) -> Built:
        ctx = self.ctx
        length = equal_flops_length(p.length, ctx.d.world)
        stack = contextlib.ExitStack()
        stack.enter_context(sdpa_backend(v.backend))
        try:
            q, k, v_, dout = ctx.inputs(p, None, length=length,
                                        seed=p.seed(ctx.args.seed) + 17 + ctx.d.rank)
            step = SdpaStep(*(t.requires_grad_() for t in (q, k, v_)), dout, p.causal)
        except BaseException:
            stack.close()
            raise
        return Built(probe=step.probe, step=step, positions=None, stack=stack,
                     notes=lambda: {"gqa": step.gqa, "L1": length})

    def flops(self, p: Problem, notes: dict) -> tuple[float, int]:
        return attention_flops(p.batch, p.hq, notes["L1"], p.d, p.causal), 1
