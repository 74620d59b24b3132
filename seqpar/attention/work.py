"""Per-rank attention work (query-key pairs per batch and head), from the same
plans the strategies execute (``plan.strategy_plans``): what the load-balance
tests and the demo report."""

from __future__ import annotations

from ..comm.collectives import even_split
from ..layout import Layout, get_layout
from .plan import documents_from_cu_seqlens, plan_work, strategy_plans


def work_per_rank(*, strategy: str, world: int, length: int, causal: bool,
                  layout: str | Layout = "contiguous", ulysses: int | None = None,
                  cu_seqlens=None, heads: int | None = None) -> list[int]:
    """Query-key pairs each rank computes (per batch element and query head).

    ``ring``, ``allgather`` and ``rsa`` compute the blocks of their plans (rsa
    materialises the same visible pairs); ``ulysses`` computes full-sequence
    attention for H/P heads, reported here per head-equivalent (1/P of the total);
    ``hybrid`` (``ulysses`` = U of a ``seqpar.hybrid_mesh``) the plans of its ring
    member for H/U heads, likewise per head-equivalent. ``cu_seqlens``: packed
    documents, as given to ``seqpar.attention``. ``heads``: Hq, for ``ulysses`` and
    ``hybrid`` when the group does not divide it: rank j then computes its ``h_j`` heads
    (``even_split``, e.g. 7 on 2 ranks = 4 + 3) and reports ``h_j / Hq`` of its
    member's work, which shows the imbalance of an uneven split.
    """
    lay = get_layout(layout)
    docs = documents_from_cu_seqlens(cu_seqlens, length) if cu_seqlens is not None else None
    if strategy == "ulysses":
        total = plan_work(strategy_plans("ulysses", lay, 0, world, length, causal, docs)[0])
        if heads is None:
            return [total // world] * world
        return [total * n // heads for _, n in even_split(heads, world)]
    share = 1
    if strategy == "hybrid":
        if ulysses is None or ulysses < 1 or world % ulysses:
            raise ValueError(f"work_per_rank(strategy='hybrid') needs ulysses= a divisor of "
                             f"world={world}, got {ulysses}")
        share = ulysses
    counts = [n for _, n in even_split(heads, share)] if heads is not None else None
    return [sum(plan_work(p) for p in strategy_plans(strategy, lay, rank, world, length, causal,
                                                     docs, ulysses=ulysses or 1))
            * (counts[rank % share] if counts else 1) // (heads if counts else share)
            for rank in range(world)]
