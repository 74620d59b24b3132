"""Blockwise ring attention with online softmax (Liu et al.; ring-flash-attention).

KV blocks travel around the ring (K and V packed in one buffer); the block for
step i+1 is in flight while step i computes. Memory is O(L/P). In backward the
kv blocks travel again and their fp32 dK/dV accumulators ride with them, one
extra hop bringing each home. Causal steps whose block lies entirely in the
future (or, for packed documents, shares no document) are skipped; the buffer
still moves on.
"""

from __future__ import annotations

import torch

from ..comm import RingExchange, group_rank_size
from ..kernels import acc_dtype
from .blockwise import (
    Accumulator,
    GradAccumulator,
    PlannedAttention,
    backward_blocks,
    forward_blocks,
)
from .plan import ScoreBlock, strategy_plans


class RingAttention(torch.autograd.Function):
    """Forward: P steps of (send kv onward | compute local q against the held kv).
    Backward: P steps of (send kv onward | block grads; add them to the dK/dV running
    sum that arrived from the previous rank and send it on)."""

    @staticmethod
    def forward(ctx, q, k, v, group, plans: list[list[ScoreBlock]], scale: float):
        _, world = group_rank_size(group)
        ring = RingExchange(group)
        kv = torch.stack([k, v])  # 2 x (B, Hkv, Ls, D) -> (2, B, Hkv, Ls, D): one message
        acc = Accumulator(q)
        for step in range(world):
            if step + 1 < world:
                ring.start(kv)
            forward_blocks(acc, q, kv[0], kv[1], plans[step], scale)
            if step + 1 < world:
                kv = ring.wait()
        out = acc.out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, acc.lse)
        ctx.group, ctx.plans, ctx.scale = group, plans, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        _, world = group_rank_size(ctx.group)
        dout = dout.contiguous()
        a = acc_dtype(q.dtype)
        kv_ring, grad_ring = RingExchange(ctx.group), RingExchange(ctx.group)
        kv = torch.stack([k, v])  # (2, B, Hkv, Ls, D)
        dq = GradAccumulator(torch.empty(q.shape, dtype=a, device=q.device))
        for step in range(world):
            if step + 1 < world:
                kv_ring.start(kv)
            # this rank's share of the held block's dK/dV, computed while the running
            # sum is still on its way from the previous rank
            grads = backward_blocks(dout, q, kv[0], kv[1], out, lse, ctx.plans[step],
                                    ctx.scale, dq)
            # dK/dV summed so far for the held block: (2, B, Hkv, Ls, D) fp32
            if step == 0:
                dkv = GradAccumulator(torch.empty(kv.shape, dtype=a, device=q.device))
            else:
                dkv = GradAccumulator(grad_ring.wait(), full=True)
            for k0, k1, gk, gv in grads:
                dkv.add(k0, k1, gk, gv)
            grads = None
            grad_ring.start(dkv.finish())  # onward; after P hops each block's grads are home
            if step + 1 < world:
                kv = kv_ring.wait()
        dkv = grad_ring.wait()
        return dq.finish().to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def planned_ring(q, k, v, *, group, plans: list[list[ScoreBlock]], scale: float):
    """Ring attention over ``group`` where ``plans[s]`` is this rank's plan against the
    K/V it holds at step ``s`` (that of ring member ``rank - s``)."""
    if group_rank_size(group)[1] == 1:
        return PlannedAttention.apply(q, k, v, plans[0], scale)
    return RingAttention.apply(q, k, v, group, plans, scale)


def ring_attention(q, k, v, *, group, layout, causal: bool, scale: float, documents=None):
    """This rank's output of exact ring attention over ``group``."""
    rank, world = group_rank_size(group)
    length = q.shape[2] * world
    plans = strategy_plans("ring", layout, rank, world, length, causal, documents)
    return planned_ring(q, k, v, group=group, plans=plans, scale=scale)
