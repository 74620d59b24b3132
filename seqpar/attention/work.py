"""Per-rank attention work (query-key pairs per batch and head), from the same
plans the strategies execute: what the load-balance tests and the demo report."""

from __future__ import annotations

from ..layout import Layout, get_layout
from .plan import make_plan, pair_plan, plan_work


def work_per_rank(*, strategy: str, world: int, length: int, causal: bool,
                  layout: str | Layout = "contiguous") -> list[int]:
    """Query-key pairs each rank computes (per batch element and query head).

    ``ring``, ``allgather`` and ``rsa`` compute the blocks of their plans (rsa
    materialises the same visible pairs); ``ulysses`` computes full-sequence
    attention for H/P heads, reported here per head-equivalent (1/P of the total).
    """
    lay = get_layout(layout)
    if strategy == "ulysses":
        total = plan_work(make_plan([(0, length)], [(0, length)], causal))
        return [total // world] * world
    return [sum(plan_work(pair_plan(lay, rank, src, world, length, causal))
                for src in range(world)) for rank in range(world)]
