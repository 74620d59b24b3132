"""All-gather context parallelism (Llama-3 style).

K and V are all-gathered once (packed in one buffer); local queries attend to
the full sequence through a causal plan that skips future blocks; backward
reduce-scatters dK/dV to their owners. Memory O(L) for KV, a single collective
per direction that NCCL runs at full all-gather bandwidth.
"""

from __future__ import annotations

import torch

from ..comm import all_gather_seq, group_rank_size
from .blockwise import PlannedAttention
from .plan import allgather_reorders, strategy_plans
from .reorder import to_global_order


def allgather_attention(q, k, v, *, group, layout, causal: bool, scale: float,
                        documents=None):
    """This rank's output of attention against the all-gathered K/V."""
    rank, world = group_rank_size(group)
    length = q.shape[2] * world
    # 2 x (B, Hkv, Ls, D) -> (2, B, Hkv, Ls, D) -> gathered along seq: (2, B, Hkv, L, D)
    kv = all_gather_seq(torch.stack([k, v]), 3, group)
    if allgather_reorders(layout, world, length, causal, documents):
        # rank order -> global order: each query run then needs one full block and one
        # diagonal block instead of one per (query run, kv run) pair
        kv = to_global_order(kv, 3, layout, world)
    (plan,) = strategy_plans("allgather", layout, rank, world, length, causal, documents)
    return PlannedAttention.apply(q, kv[0], kv[1], plan, scale)
