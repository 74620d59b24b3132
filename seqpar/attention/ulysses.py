"""DeepSpeed-Ulysses: all-to-all from sequence-sharded to head-sharded.

One all-to-all moves q, k and v together (B, H, L/P, D) -> (B, H/P, L, D);
each rank runs ordinary attention over the full sequence for its heads; one
all-to-all brings the output back. Needs Hq and Hkv divisible by P.
"""

from __future__ import annotations

import torch

from ..comm import group_rank_size, heads_to_seq, seq_to_heads
from ..layout import Contiguous
from .blockwise import PlannedAttention
from .plan import make_plan


def ulysses_attention(q, k, v, *, group, layout, causal: bool, scale: float):
    """This rank's output of Ulysses attention over ``group``."""
    _, world = group_rank_size(group)
    length = q.shape[2] * world
    # (B, H, L/P, D) -> (B, H/P, L, D), the L axis in rank order
    qh, kh, vh = seq_to_heads(q, k, v, group=group)
    reorder = causal and not isinstance(layout, Contiguous)
    if reorder:
        # rank order -> global order, so causal attention is one diagonal block
        order = torch.cat([layout.global_positions(r, world, length, q.device)
                           for r in range(world)])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(length, device=q.device)
        qh, kh, vh = (t.index_select(2, inverse) for t in (qh, kh, vh))
    plan = make_plan([(0, length)], [(0, length)], causal)
    out = PlannedAttention.apply(qh, kh, vh, plan, scale)  # (B, Hq/P, L, D)
    if reorder:
        out = out.index_select(2, order)  # global order -> rank order
    (out,) = heads_to_seq(out, group=group)  # (B, Hq/P, L, D) -> (B, Hq, L/P, D)
    return out
