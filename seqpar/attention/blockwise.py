"""Running a plan of blocks: forward with an fp32 log-sum-exp merge, and backward
with fp32 gradient accumulation, using the local kernels."""

from __future__ import annotations

import torch

from ..kernels import acc_dtype, block_backward, block_forward
from .plan import Block


def merge(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor,
          block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial softmax results of the same query rows.

    ``lse = log(exp(lse) + exp(block_lse))``, ``out = Σ exp(lse_i - lse)·out_i``;
    rows with no visible key yet (lse = -inf) stay 0 without NaNs.
    """
    new_lse = torch.logaddexp(lse, block_lse)
    safe = torch.where(torch.isinf(new_lse), torch.zeros_like(new_lse), new_lse)
    w_old = torch.exp(lse - safe).unsqueeze(-1)
    w_new = torch.exp(block_lse - safe).unsqueeze(-1)
    return out * w_old + block_out.to(out.dtype) * w_new, new_lse


class Accumulator:
    """fp32 (fp64 for fp64 inputs) running output and lse for a set of query rows."""

    def __init__(self, q: torch.Tensor):
        b, h, lq, d = q.shape
        self.acc = acc_dtype(q.dtype)
        self.out = torch.zeros(b, h, lq, d, dtype=self.acc, device=q.device)
        self.lse = torch.full((b, h, lq), float("-inf"), dtype=self.acc, device=q.device)
        self._touched = False

    def add(self, block: Block, out: torch.Tensor, lse: torch.Tensor) -> None:
        rows = slice(block.q0, block.q1)
        if not self._touched and block.q0 == 0 and block.q1 == self.out.shape[2]:
            self.out, self.lse = out.to(self.acc), lse.to(self.acc)
        else:
            o, s = merge(self.out[:, :, rows], self.lse[:, :, rows], out, lse.to(self.acc))
            self.out[:, :, rows], self.lse[:, :, rows] = o, s
        self._touched = True


def forward_blocks(acc: Accumulator, q, k, v, plan: list[Block], scale: float) -> None:
    """Compute every block of ``plan`` and merge it into ``acc``."""
    for blk in plan:
        out, lse = block_forward(q[:, :, blk.q0:blk.q1], k[:, :, blk.k0:blk.k1],
                                 v[:, :, blk.k0:blk.k1], scale=scale, causal=blk.causal)
        acc.add(blk, out, lse)


def backward_blocks(dout, q, k, v, out, lse, plan: list[Block], scale: float,
                    dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> None:
    """Accumulate every block's gradients into the fp32 buffers ``dq``, ``dk``, ``dv``."""
    for blk in plan:
        rows, cols = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
        gq, gk, gv = block_backward(dout[:, :, rows], q[:, :, rows], k[:, :, cols],
                                    v[:, :, cols], out[:, :, rows], lse[:, :, rows],
                                    scale=scale, causal=blk.causal)
        dq[:, :, rows] += gq
        dk[:, :, cols] += gk
        dv[:, :, cols] += gv


def _is_whole(plan: list[Block], q: torch.Tensor, k: torch.Tensor) -> bool:
    """True when the plan is one block covering every query row and kv column."""
    return (len(plan) == 1 and plan[0].q0 == 0 and plan[0].q1 == q.shape[2]
            and plan[0].k0 == 0 and plan[0].k1 == k.shape[2])


def plan_forward(q, k, v, plan: list[Block], scale: float):
    """``(out, lse)`` of local queries against a local kv buffer; out in q's dtype."""
    if _is_whole(plan, q, k):  # one block over everything: the kernel's own output
        out, lse = block_forward(q, k, v, scale=scale, causal=plan[0].causal)
        return out.to(q.dtype), lse
    acc = Accumulator(q)
    forward_blocks(acc, q, k, v, plan, scale)
    return acc.out.to(q.dtype), acc.lse


def plan_backward(dout, q, k, v, out, lse, plan: list[Block], scale: float):
    """``(dq, dk, dv)`` in the inputs' dtypes, accumulated in fp32 when several blocks."""
    dout = dout.contiguous()
    if _is_whole(plan, q, k):  # gradients straight from the kernel, no fp32 round trip
        dq, dk, dv = block_backward(dout, q, k, v, out, lse, scale=scale,
                                    causal=plan[0].causal)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    a = acc_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=a, device=q.device)
    dk = torch.zeros(k.shape, dtype=a, device=k.device)
    dv = torch.zeros(v.shape, dtype=a, device=v.device)
    backward_blocks(dout, q, k, v, out, lse, plan, scale, dq, dk, dv)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class PlannedAttention(torch.autograd.Function):
    """Attention of local queries against a local kv buffer, following a plan.

    Forward: each block through the fastest kernel, merged by log-sum-exp in fp32.
    Backward: each block's gradients from the final output and lse, accumulated
    in fp32 and cast once. Used for one device, all-gather and the hybrid's ring of one.
    """

    @staticmethod
    def forward(ctx, q, k, v, plan, scale):
        ctx.plan, ctx.scale = plan, scale
        out, lse = plan_forward(q, k, v, plan, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        return (*plan_backward(dout, q, k, v, out, lse, ctx.plan, ctx.scale), None, None)
