"""All-gather context parallelism (Llama-3 style).

K and V are all-gathered once (packed in one buffer); local queries attend to
the full sequence through a causal plan that skips future blocks; backward
reduce-scatters dK/dV to their owners. Memory O(L) for KV, a single collective
per direction that NCCL runs at full all-gather bandwidth.
"""

from __future__ import annotations

import torch

from ..comm import all_gather_seq, group_rank_size
from ..layout import Contiguous
from .blockwise import PlannedAttention
from .plan import make_plan, slices_plan
from .reorder import to_global_order


def allgather_attention(q, k, v, *, group, layout, causal: bool, scale: float,
                        documents=None):
    """This rank's output of attention against the all-gathered K/V."""
    rank, world = group_rank_size(group)
    length = q.shape[2] * world
    # 2 x (B, Hkv, Ls, D) -> (2, B, Hkv, Ls, D) -> gathered along seq: (2, B, Hkv, L, D)
    kv = all_gather_seq(torch.stack([k, v]), 3, group)
    if causal and documents is None and layout.closed_form(rank, rank, world, length) is not None:
        # the layout's closed form, kv left in rank order: its blocks per source rank
        plan = slices_plan(layout, [rank], list(range(world)), world, length, causal)
        return PlannedAttention.apply(q, kv[0], kv[1], plan, scale)
    if not isinstance(layout, Contiguous) and (causal or documents is not None):
        # rank order -> global order: each query run then needs one full block and one
        # diagonal block instead of one per (query run, kv run) pair
        kv = to_global_order(kv, 3, layout, world)
        kv_segments = [(0, length)]
    else:
        kv_segments = [seg for r in range(world) for seg in layout.segments(r, world, length)]
    plan = make_plan(layout.segments(rank, world, length), kv_segments, causal, documents)
    return PlannedAttention.apply(q, kv[0], kv[1], plan, scale)
