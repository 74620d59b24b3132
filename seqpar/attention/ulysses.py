"""DeepSpeed-Ulysses: all-to-all from sequence-sharded to head-sharded.

One all-to-all moves q, k and v together (B, H, L/P, D) -> (B, H/P, L, D);
each rank runs ordinary attention over the full sequence for its heads; one
all-to-all brings the output back. Needs Hq divisible by P. With GQA and
P > Hkv (or Hkv not divisible by P) kv heads are replicated before the
all-to-all so every rank receives the kv heads its query heads use.
"""

from __future__ import annotations

import math

import torch

from ..comm import group_rank_size, heads_to_seq, seq_to_heads
from ..layout import Contiguous
from .blockwise import PlannedAttention
from .plan import make_plan


def replicate_kv_heads(k: torch.Tensor, v: torch.Tensor, world: int):
    """Repeat kv heads so their count divides by ``world``:
    ``(B, Hkv, L, D) -> (B, lcm(Hkv, P), L, D)``; query head i still maps to the
    copy of kv head ``i // (Hq/Hkv)``. Gradients of the copies sum back."""
    hkv = k.shape[1]
    rep = math.lcm(hkv, world) // hkv
    if rep == 1:
        return k, v
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def heads_parallel(q, k, v, *, group, seq_order, causal: bool, scale: float,
                   documents=None):
    """Ulysses core over ``group``. ``seq_order`` (or None when already in order):
    the global position of each token of the gathered sequence, which is the
    concatenation of the members' shards in group-rank order."""
    _, world = group_rank_size(group)
    k, v = replicate_kv_heads(k, v, world)
    # (B, H, Ls, D) -> (B, H/P, P*Ls, D), the sequence axis in group-rank order
    qh, kh, vh = seq_to_heads(q, k, v, group=group)
    length = qh.shape[2]
    if seq_order is not None:
        # -> global order, so causal attention is one diagonal block
        inverse = torch.empty_like(seq_order)
        inverse[seq_order] = torch.arange(length, device=q.device)
        qh, kh, vh = (t.index_select(2, inverse) for t in (qh, kh, vh))
    plan = make_plan([(0, length)], [(0, length)], causal, documents)
    out = PlannedAttention.apply(qh, kh, vh, plan, scale)  # (B, Hq/P, L, D)
    if seq_order is not None:
        out = out.index_select(2, seq_order)  # global order -> group-rank order
    (out,) = heads_to_seq(out, group=group)  # (B, Hq/P, P*Ls, D) -> (B, Hq, Ls, D)
    return out


def ulysses_attention(q, k, v, *, group, layout, causal: bool, scale: float, documents=None):
    """This rank's output of Ulysses attention over ``group``."""
    _, world = group_rank_size(group)
    length = q.shape[2] * world
    seq_order = None
    if (causal or documents is not None) and not isinstance(layout, Contiguous):
        seq_order = torch.cat([layout.global_positions(r, world, length, q.device)
                               for r in range(world)])
    return heads_parallel(q, k, v, group=group, seq_order=seq_order, causal=causal,
                          scale=scale, documents=documents)
