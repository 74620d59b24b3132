"""Ulysses x ring (USP): all-to-all inside the ``ulysses`` mesh dim, ring across ``ring``.

The global sequence is split over all P = U·R ranks; the member at ring ``r``,
ulysses ``u`` holds slice ``slices[r][u]`` (``seqpar.comm.hybrid_slices``: global
rank order, ``r·U + u`` on ``seqpar.hybrid_mesh``). The Ulysses all-to-all gives
each rank Hq/U heads for the U slices of its ring member; ring attention over
the ``ring`` dim then covers the rest of the sequence. Memory O(L/R) for those
heads; the all-to-all stays inside fast links while the ring can span slower ones.
"""

from __future__ import annotations

from ..comm import group_rank_size, heads_to_seq, hybrid_groups, hybrid_slices, seq_to_heads
from .plan import strategy_plans
from .ring import planned_ring
from .ulysses import head_split, replicate_kv_heads


def hybrid_attention(q, k, v, *, group, layout, causal: bool, scale: float, documents=None):
    """This rank's output of hybrid Ulysses x ring attention over the 2-D mesh ``group``."""
    ug, rg = hybrid_groups(group)
    (rank_u, size_u), (rank_r, size_r) = group_rank_size(ug), group_rank_size(rg)
    world = size_u * size_r
    length = q.shape[2] * world
    slices = hybrid_slices(group)  # [r][u]: what ring member r holds after the all-to-all
    rep, q_split, kv_split = head_split(q.shape[1], k.shape[1], size_u)
    k, v = replicate_kv_heads(k, v, rep)
    even = q.shape[1] % size_u == 0 and k.shape[1] % size_u == 0
    splits = None if even else (q_split, kv_split, kv_split)  # uneven heads: 7 on 2 = 4 + 3
    # (B, H, Ls, D) -> (B, H/U, U*Ls, D): the shards of slices[r], in that order
    qh, kh, vh = seq_to_heads(q, k, v, group=ug, splits=splits)
    plans = strategy_plans("hybrid", layout, slices[rank_r][rank_u], world, length, causal,
                           documents, slices=slices, ulysses=size_u)
    out = planned_ring(qh, kh, vh, group=rg, plans=plans, scale=scale)
    # (B, Hq/U, U*Ls, D) -> (B, Hq, Ls, D)
    (out,) = heads_to_seq(out, group=ug, splits=splits and splits[:1])
    return out


__all__ = ["hybrid_attention"]
