"""Ring Self-Attention (Li et al., arXiv 2105.13120), kept faithful to the paper.

Forward, two rings: keys travel so each rank builds the scores of its queries
against the whole sequence (``L/P x L`` per head), softmax, then values travel
so each rank forms its output. Backward uses the same two rings in reverse:
values again (with their dV accumulators riding along), then keys (with dK).
Memory is O(L²/P): the full probability block is kept for backward. This is the
paper's row in our tables, not our fast path.
"""

from __future__ import annotations

import torch

from ..comm import RingExchange, group_rank_size
from ..kernels import acc_dtype
from .plan import strategy_plans


def _ring_pass(x: torch.Tensor, group, world: int, visit) -> None:
    """Pass ``x`` around the ring; ``visit(step, block)`` sees every rank's block."""
    ring = RingExchange(group)
    for step in range(world):
        if step + 1 < world:
            ring.start(x)
        visit(step, x)
        if step + 1 < world:
            x = ring.wait()


def _ring_pass_with_grad(x: torch.Tensor, group, world: int, visit, grad_dtype) -> torch.Tensor:
    """Like :func:`_ring_pass`, with a gradient accumulator riding along with each block;
    ``visit(step, block, grad)`` adds into ``grad``. Returns the home block's total."""
    ring, grad_ring = RingExchange(group), RingExchange(group)
    grad = None
    for step in range(world):
        if step + 1 < world:
            ring.start(x)
        grad = grad_ring.wait() if step > 0 else torch.zeros(x.shape, dtype=grad_dtype,
                                                              device=x.device)
        visit(step, x, grad)
        if world > 1:
            grad_ring.start(grad)
        if step + 1 < world:
            x = ring.wait()
    return grad_ring.wait() if world > 1 else grad


class RingSelfAttention(torch.autograd.Function):
    """Forward: K ring -> scores -> softmax -> V ring -> output.
    Backward: V ring (dP, dV riding) -> softmax backward -> K ring (dQ, dK riding)."""

    @staticmethod
    def forward(ctx, q, k, v, group, q_pos, kv_pos, causal: bool, scale: float, doc_of,
                visible: list[bool]):
        rank, world = group_rank_size(group)
        b, hq, ls, d = q.shape
        hkv = k.shape[1]
        g = hq // hkv
        a = acc_dtype(q.dtype)
        # (B, Hq, Ls, D) -> (B, Hkv, G, Ls, D)
        qg = q.to(a).reshape(b, hkv, g, ls, d)
        # scores of local queries against every rank's keys, block by source rank
        scores = torch.full((world, b, hkv, g, ls, ls), float("-inf"), dtype=a, device=q.device)

        def score_block(step, kb):
            src = (rank - step) % world
            if not visible[src]:  # no visible pair: the whole block stays -inf
                return
            mask = None  # (Ls, Ls): True where the key is invisible to the query
            if causal:
                mask = kv_pos[src][None, :] > q_pos[:, None]  # key in the future
            if doc_of is not None:
                other_doc = doc_of(kv_pos[src])[None, :] != doc_of(q_pos)[:, None]
                mask = other_doc if mask is None else mask | other_doc
            # (B, Hkv, G, Ls, D) @ (B, Hkv, 1, D, Ls) -> (B, Hkv, G, Ls, Ls)
            s = torch.matmul(qg, kb.to(a).unsqueeze(2).transpose(-1, -2)) * scale
            if mask is not None:
                s.masked_fill_(mask, float("-inf"))
            scores[src] = s

        _ring_pass(k, group, world, score_block)
        # softmax over the whole row: all source blocks together
        # (P, B, Hkv, G, Ls, Ls) -> (B, Hkv, G, Ls, P*Ls): one row per query
        rows = scores.permute(1, 2, 3, 4, 0, 5).reshape(b, hkv, g, ls, world * ls)
        # (B, Hkv, G, Ls, P*Ls) -> (P, B, Hkv, G, Ls, Ls)
        probs = torch.softmax(rows, dim=-1).reshape(b, hkv, g, ls, world, ls)
        probs = probs.permute(4, 0, 1, 2, 3, 5)
        out = torch.zeros(b, hkv, g, ls, d, dtype=a, device=q.device)

        def apply_values(step, vb):
            src = (rank - step) % world
            if visible[src]:
                out.add_(torch.matmul(probs[src], vb.to(a).unsqueeze(2)))

        _ring_pass(v, group, world, apply_values)
        ctx.save_for_backward(q, k, v, probs)
        ctx.group, ctx.visible, ctx.scale = group, visible, scale
        # (B, Hkv, G, Ls, D) -> (B, Hq, Ls, D)
        return out.reshape(b, hq, ls, d).to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, probs = ctx.saved_tensors
        rank, world = group_rank_size(ctx.group)
        b, hq, ls, d = q.shape
        hkv = k.shape[1]
        g = hq // hkv
        a = acc_dtype(q.dtype)
        visible, scale = ctx.visible, ctx.scale
        # (B, Hq, Ls, D) -> (B, Hkv, G, Ls, D)
        do = dout.to(a).reshape(b, hkv, g, ls, d)
        dprobs = torch.zeros_like(probs)

        def value_grads(step, vb, dvb):
            src = (rank - step) % world
            if visible[src]:
                # dP = dO V^T: (B, Hkv, G, Ls, D) @ (B, Hkv, 1, D, Ls)
                dprobs[src] = torch.matmul(do, vb.to(a).unsqueeze(2).transpose(-1, -2))
                # dV = P^T dO summed over the G query heads: (B, Hkv, Ls, D)
                dvb.add_(torch.matmul(probs[src].transpose(-1, -2), do).sum(2))

        dv = _ring_pass_with_grad(v, ctx.group, world, value_grads, a)
        # softmax backward over the whole row (all source blocks)
        dscores = probs * (dprobs - (dprobs * probs).sum(dim=(0, -1), keepdim=True))
        qg = q.to(a).reshape(b, hkv, g, ls, d)
        dq = torch.zeros_like(qg)

        def key_grads(step, kb, dkb):
            src = (rank - step) % world
            if visible[src]:
                dq.add_(torch.matmul(dscores[src], kb.to(a).unsqueeze(2)) * scale)
                dkb.add_(torch.matmul(dscores[src].transpose(-1, -2), qg).sum(2) * scale)

        dk = _ring_pass_with_grad(k, ctx.group, world, key_grads, a)
        return (dq.reshape(b, hq, ls, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                None, None, None, None, None, None, None)


def rsa_attention(q, k, v, *, group, layout, causal: bool, scale: float, documents=None):
    """This rank's output of Ring Self-Attention over ``group``."""
    rank, world = group_rank_size(group)
    length = q.shape[2] * world
    kv_pos = [layout.global_positions(r, world, length, q.device) for r in range(world)]
    doc_of = None
    if documents is not None:
        ends = torch.tensor([e for _, e in documents], device=q.device)
        doc_of = lambda pos: torch.bucketize(pos, ends, right=True)  # document index
    # which source blocks have any visible pair, from the block planner: no host sync
    plans = strategy_plans("rsa", layout, rank, world, length, causal, documents)
    visible = [bool(plans[(rank - src) % world]) for src in range(world)]
    return RingSelfAttention.apply(q, k, v, group, kv_pos[rank], kv_pos, causal, scale, doc_of,
                                   visible)
