"""Ulysses x ring (USP): all-to-all inside the ``ulysses`` mesh dim, ring across ``ring``.

The global sequence is split over all P = U·R ranks, slice ``r·U + u`` on mesh
coordinate ``(u, r)``. The Ulysses all-to-all gives each rank Hq/U heads for
the U slices of its ring member; ring attention over the ``ring`` dim then
covers the rest of the sequence. Memory O(L/R) for those heads; the all-to-all
stays inside fast links while the ring can span slower ones.
"""

from __future__ import annotations

from ..comm import group_rank_size, heads_to_seq, hybrid_groups, seq_to_heads
from .ring import ring_over
from .ulysses import replicate_kv_heads


def hybrid_attention(q, k, v, *, mesh, layout, causal: bool, scale: float, documents=None):
    """This rank's output of hybrid Ulysses x ring attention over a 2-D mesh."""
    ug, rg = hybrid_groups(mesh)
    (_, size_u), (_, size_r) = group_rank_size(ug), group_rank_size(rg)
    world = size_u * size_r
    length = q.shape[2] * world
    k, v = replicate_kv_heads(k, v, size_u)
    # (B, H, Ls, D) -> (B, H/U, U*Ls, D): the slices r*U .. r*U+U-1, in that order
    qh, kh, vh = seq_to_heads(q, k, v, group=ug)
    # ring member r holds the segments of slices r*U .. r*U+U-1
    segments = [[seg for u in range(size_u)
                 for seg in layout.segments(r * size_u + u, world, length)]
                for r in range(size_r)]
    out = ring_over(qh, kh, vh, group=rg, segments=segments, causal=causal, scale=scale,
                    documents=documents)
    (out,) = heads_to_seq(out, group=ug)  # (B, Hq/U, U*Ls, D) -> (B, Hq, Ls, D)
    return out


__all__ = ["hybrid_attention"]
