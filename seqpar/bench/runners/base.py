"""The interface every benchmark runner implements, and what it hands to the measurement.

A runner is one kind of thing the benchmark times (seqpar's strategies, a peer
library, the one-device ceiling). The grid (``grid.RUNNERS``) asks each
registered runner for its command-line options and its variants; for each
problem the measurement asks it to ``setup`` a variant and times what comes
back. Runners never time, check or record anything themselves, so every row of
a table is measured the same way.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn

import torch

from ..launch import Dist
from ..problem import Problem, Variant
from ..report import attention_flops


@dataclass
class RunContext:
    """What runners share within one run: options, the process group, the dtype."""

    args: argparse.Namespace
    d: Dist
    dtype: torch.dtype

    def inputs(self, p: Problem, positions: torch.Tensor | None, **kw) -> list[torch.Tensor]:
        """The problem's q, k, v, dout cut to ``positions`` (``Problem.inputs``)."""
        seed = kw.pop("seed", None)
        seed = p.seed(self.args.seed) if seed is None else seed
        return p.inputs(self.d.device, seed, positions, **kw)

    def say(self, text: str) -> None:
        """Print on rank 0."""
        if self.d.rank == 0:
            print(text, flush=True)


@dataclass
class Built:
    """A variant ready to time: its inputs live in the callables' closures.

    ``probe`` runs first (it may validate, build plans, pick a fallback), ``step``
    is what is timed; both return this rank's output rows, whose global positions
    are ``positions`` (None: nothing to check). ``notes`` is called after the probe
    and its keys go into the record; ``stack`` is closed when the variant is done.
    """

    probe: Callable[[], torch.Tensor]
    step: Callable[[], torch.Tensor]
    positions: torch.Tensor | None
    notes: Callable[[], dict] = dict
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


class Runner:
    """Base class of a benchmark runner; subclasses set ``name`` and ``kind`` and
    implement ``variants`` and ``setup``.

    Class-level hooks (no process group needed): ``add_arguments``,
    ``check_arguments``, ``variants``. Instance hooks run on every rank in the
    same order: ``prepare`` once per run, then per variant ``skip`` and ``setup``.
    """

    #: registry name (``Variant.runner``)
    name: ClassVar[str] = ""
    #: what the report groups by: "seqpar", "peer" or "ceiling"
    kind: ClassVar[str] = "peer"
    #: whether its collectives go through seqpar.comm (bytes sent are then recorded)
    counts_bytes: ClassVar[bool] = False

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, device: str) -> None:
        """Add this runner's options (defaults may depend on ``device``: "cuda" or "cpu")."""

    @classmethod
    def check_arguments(cls, args: argparse.Namespace,
                        error: Callable[[str], NoReturn]) -> None:
        """Reject bad option values through ``error`` (argparse's ``parser.error``)."""

    @classmethod
    def variants(cls, args: argparse.Namespace, world: int) -> tuple[list[Variant],
                                                                      list[Variant]]:
        """(first, later) variants: a time budget runs every runner's first ones, then
        every runner's later ones (e.g. a second SDPA backend)."""
        raise NotImplementedError

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def prepare(self) -> None:
        """Once per run, on every rank, before the first problem (e.g. build meshes).
        Must not raise: record why something is missing and raise it from ``setup``."""

    def skip(self, p: Problem, v: Variant) -> tuple[str, str] | None:
        """(status, reason) known without running, identical on every rank; None: run it."""
        return None

    def setup(self, p: Problem, v: Variant) -> Built:
        """Build the inputs and callables of one variant (may raise: recorded per variant)."""
        raise NotImplementedError

    def flops(self, p: Problem, notes: dict) -> tuple[float, int]:
        """(total FLOPs of one step, devices it runs on) for the TFLOP/s per device."""
        return attention_flops(p.batch, p.hq, p.length, p.d, p.causal), self.ctx.d.world
