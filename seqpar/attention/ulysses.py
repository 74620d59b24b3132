"""DeepSpeed-Ulysses: all-to-all from sequence-sharded to head-sharded.

One all-to-all moves q, k and v together (B, H, L/P, D) -> (B, H/P, L, D);
each rank runs ordinary attention over the full sequence for its heads; one
all-to-all brings the output back. Heads the group does not divide are dealt
unevenly (7 on 2 ranks: 4 + 3; ``head_split``); only P > Hq is impossible. With
GQA, kv heads are replicated where needed so every rank receives whole groups
of the kv heads its query heads use.
"""

from __future__ import annotations

import math

import torch

from ..comm import group_rank_size
from ..comm.collectives import HeadSplit, even_split, start_heads_to_seq, start_seq_to_heads
from ..layout import Contiguous
from .blockwise import plan_backward, plan_forward
from .plan import strategy_plans
from .reorder import SeqOrder


def replicate_kv_heads(k: torch.Tensor, v: torch.Tensor, rep: int):
    """``(B, Hkv, L, D) -> (B, rep·Hkv, L, D)``, each kv head ``rep`` times in a row: query
    head i still maps to a copy of kv head ``i // (Hq/Hkv)``. Gradients of the copies sum
    back (``repeat_interleave``'s backward)."""
    if rep == 1:
        return k, v
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def head_split(hq: int, hkv: int, world: int) -> tuple[int, HeadSplit, HeadSplit]:
    """``(rep, q split, kv split)``: how Ulysses deals heads over ``world`` ranks.

    Query heads are dealt as evenly as they go (:func:`even_split`, 7 on 2 ranks: 4 + 3).
    kv heads are replicated ``rep`` times (the fewest copies) so that every rank's query
    heads use whole groups of ``g = Hq / (rep·Hkv)`` starting at a group boundary: rank j
    then gets kv heads ``[first/g, (first+n)/g)``, routed to it with its query heads, and
    local attention is ordinary GQA. Even splits with P | Hkv need no copies; with
    P > Hkv this is ``lcm(Hkv, P)/Hkv`` copies as before."""
    q_split = even_split(hq, world)
    group = hq // hkv
    for g in sorted((d for d in range(1, group + 1) if group % d == 0), reverse=True):
        if all(first % g == 0 and n % g == 0 for first, n in q_split):
            kv_split = tuple((first // g, n // g) for first, n in q_split)
            return group // g, q_split, kv_split
    raise AssertionError("unreachable: g = 1 always aligns")


#: Head chunks to pipeline by default. Measured on 4xH200 (BENCHMARKS.md, v2):
#: 4 chunks made causal 32K/128K *slower* (452 vs 475, 493 vs 510 TFLOP/s/GPU):
#: smaller attention kernels cost more than the hidden all-to-all saves.
DEFAULT_CHUNKS = 1


def pipeline_chunks(hq: int, hkv: int, world: int, most: int = DEFAULT_CHUNKS) -> int:
    """How many head chunks to pipeline: the largest ``c <= most`` dividing both
    Hq/P and Hkv/P, so every chunk keeps whole GQA groups on every rank (1 when the
    heads do not split evenly)."""
    if hq % world or hkv % world:
        return 1
    per_rank = math.gcd(hq // world, hkv // world)
    return max(c for c in range(1, most + 1) if per_rank % c == 0)


class UlyssesAttention(torch.autograd.Function):
    """Ulysses with its all-to-alls overlapped with attention, over head chunks.

    Forward: start the seq->heads all-to-all of every chunk (q, k, v packed), then
    for each chunk wait, attend over the full sequence, and start its heads->seq
    all-to-all while the next chunk computes. Backward: the same pipeline with
    dO in and (dQ, dK, dV) packed out. Bytes equal one unchunked Ulysses.
    """

    @staticmethod
    def forward(ctx, q, k, v, group, chunks: int, order: SeqOrder | None, plan, scale: float,
                splits=None):
        # order: how the gathered sequence maps to global order, None when it is global;
        # splits: (q split, kv split) for uneven heads (then chunks == 1), None when even
        qkv_splits = (splits[0], splits[1], splits[1]) if splits else None
        pending = [start_seq_to_heads(parts, group, qkv_splits)
                   for parts in zip(q.chunk(chunks, 1), k.chunk(chunks, 1), v.chunk(chunks, 1))]
        saved, outgoing = [], []
        for incoming in pending:
            qh, kh, vh = incoming.wait()  # (B, H_c/P, L, D), L in group-rank order
            if order is not None:  # -> global order: causal is one diagonal block
                qh, kh, vh = (order.to_global(t, 2) for t in (qh, kh, vh))
            out_h, lse = plan_forward(qh, kh, vh, plan, scale)
            saved += [qh, kh, vh, out_h, lse]
            back = order.to_rank(out_h, 2) if order is not None else out_h
            outgoing.append(start_heads_to_seq((back,), group, splits and splits[:1]))
        # chunks of (B, Hq/C, Ls, D) -> (B, Hq, Ls, D)
        out = torch.cat([o.wait()[0] for o in outgoing], dim=1)
        ctx.save_for_backward(*saved)
        ctx.group, ctx.chunks, ctx.plan, ctx.scale = group, chunks, plan, scale
        ctx.order, ctx.splits = order, splits
        return out

    @staticmethod
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        order, splits = ctx.order, ctx.splits
        qkv_splits = (splits[0], splits[1], splits[1]) if splits else None
        pending = [start_seq_to_heads((d,), ctx.group, splits and splits[:1])
                   for d in dout.chunk(ctx.chunks, 1)]
        outgoing = []
        for c, incoming in enumerate(pending):
            (dout_h,) = incoming.wait()  # (B, Hq_c/P, L, D)
            if order is not None:
                dout_h = order.to_global(dout_h, 2)
            qh, kh, vh, out_h, lse = saved[5 * c:5 * c + 5]
            grads = plan_backward(dout_h, qh, kh, vh, out_h, lse, ctx.plan, ctx.scale)
            if order is not None:
                grads = tuple(order.to_rank(g, 2) for g in grads)
            outgoing.append(start_heads_to_seq(grads, ctx.group, qkv_splits))
        parts = [o.wait() for o in outgoing]  # per chunk: (dq_c, dk_c, dv_c), seq-sharded
        dq, dk, dv = (torch.cat([p[i] for p in parts], dim=1) for i in range(3))
        return dq, dk, dv, None, None, None, None, None, None


def ulysses_in_order(q, k, v, *, group, order: SeqOrder | None, causal: bool, scale: float,
                     documents=None, chunks: int | None = None):
    """Ulysses core over ``group``. ``order``: how the gathered sequence (the members'
    shards in group-rank order) maps to global order, or None when it is global order."""
    _, world = group_rank_size(group)
    rep, q_split, kv_split = head_split(q.shape[1], k.shape[1], world)
    k, v = replicate_kv_heads(k, v, rep)
    even = q.shape[1] % world == 0 and k.shape[1] % world == 0
    length = q.shape[2] * world
    (plan,) = strategy_plans("ulysses", None, 0, world, length, causal, documents)
    if chunks is None:
        chunks = pipeline_chunks(q.shape[1], k.shape[1], world)
    elif not even and chunks != 1 or even and ((q.shape[1] // world) % chunks
                                                 or (k.shape[1] // world) % chunks):
        raise ValueError(f"chunks={chunks} must divide Hq/P and Hkv/P (Hq={q.shape[1]}, "
                         f"Hkv={k.shape[1]} after replication, P={world}); uneven head "
                         "splits run in one chunk")
    return UlyssesAttention.apply(q, k, v, group, chunks, order, plan, scale,
                                  None if even else (q_split, kv_split))


def ulysses_attention(q, k, v, *, group, layout, causal: bool, scale: float, documents=None):
    """This rank's output of Ulysses attention over ``group``."""
    _, world = group_rank_size(group)
    length = q.shape[2] * world
    order = None
    if (causal or documents is not None) and not isinstance(layout, Contiguous):
        order = SeqOrder(layout, world, length, q.device)
    return ulysses_in_order(q, k, v, group=group, order=order, causal=causal, scale=scale,
                            documents=documents)
