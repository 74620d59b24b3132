"""The runner registry and the variant grid it yields.

``RUNNERS`` is the ordered list of what the benchmark times; the grid is every
problem (length x Hkv x mask) times every variant the registered runners
produce. Order matters when a time budget cuts a run short: every runner's
first variants run before any runner's later ones (``Runner.variants``), so the
fastest ceiling, all of seqpar and each peer on its first backend come first.

Adding a peer: write ``runners/<peer>.py`` (a ``Runner`` subclass with
``kind = "peer"``) and add it to ``RUNNERS`` below (or ``register`` it).
"""

from __future__ import annotations

import argparse

from .problem import Variant
from .runners import Runner, SdpaCeiling, SeqparRunner, TorchContextParallel

#: the registered runners, in priority order
RUNNERS: list[type[Runner]] = [SdpaCeiling, SeqparRunner, TorchContextParallel]


def register(runner: type[Runner]) -> type[Runner]:
    """Add a runner (after the built-in ones); usable as a class decorator."""
    if not runner.name or any(r.name == runner.name for r in RUNNERS):
        raise ValueError(f"runner name {runner.name!r} is empty or already registered")
    RUNNERS.append(runner)
    return runner


def unregister(runner: type[Runner]) -> None:
    """Remove a registered runner (tests)."""
    RUNNERS.remove(runner)


def variants_for(args: argparse.Namespace, world: int = 1) -> list[Variant]:
    """Variants in priority order (what a time budget keeps first): every runner's first
    variants in registry order (the fastest ceiling, ours, each peer on its first backend),
    then every runner's later ones (the other backends)."""
    tiers = [runner.variants(args, world) for runner in RUNNERS]
    return [v for first, _ in tiers for v in first] + [v for _, later in tiers for v in later]
