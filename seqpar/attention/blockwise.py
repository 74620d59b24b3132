"""Running a plan of blocks: forward with an fp32 log-sum-exp merge, and backward
with fp32 gradient accumulation, using the local kernels."""

from __future__ import annotations

import torch

from ..kernels import acc_dtype, block_backward, block_forward
from .plan import ScoreBlock


def merge(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor,
          block_lse: torch.Tensor) -> torch.Tensor:
    """Combine two partial softmax results of the same query rows; returns the new lse.

    ``lse = log(exp(lse) + exp(block_lse))``, ``out = Σ exp(lse_i - lse)·out_i``;
    rows with no visible key yet (lse = -inf) stay 0 without NaNs. ``out`` is
    updated in place (one read-modify-write pass for the old part, one fused
    multiply-add for the new), so a merge costs ~3 passes over fp32 ``out``
    rather than the ~8 of the out-of-place expression.
    """
    new_lse = torch.logaddexp(lse, block_lse)
    safe = torch.where(torch.isinf(new_lse), torch.zeros_like(new_lse), new_lse)
    w_old = torch.exp(lse - safe).unsqueeze(-1)
    w_new = torch.exp(block_lse - safe).unsqueeze(-1)
    out.mul_(w_old).addcmul_(block_out, w_new)
    return new_lse


class Accumulator:
    """fp32 (fp64 for fp64 inputs) running output and lse for a set of query rows."""

    def __init__(self, q: torch.Tensor):
        b, h, lq, d = q.shape
        self.acc = acc_dtype(q.dtype)
        self.out = torch.zeros(b, h, lq, d, dtype=self.acc, device=q.device)
        self.lse = torch.full((b, h, lq), float("-inf"), dtype=self.acc, device=q.device)
        self._touched = False

    def add(self, block: ScoreBlock, out: torch.Tensor, lse: torch.Tensor) -> None:
        rows = slice(block.q0, block.q1)
        if not self._touched and block.q0 == 0 and block.q1 == self.out.shape[2]:
            self.out, self.lse = out.to(self.acc), lse.to(self.acc)
        else:
            # the out rows merge in place; the lse rows take the returned value
            self.lse[:, :, rows] = merge(self.out[:, :, rows], self.lse[:, :, rows], out,
                                         lse.to(self.acc))
        self._touched = True


def forward_blocks(acc: Accumulator, q, k, v, plan: list[ScoreBlock], scale: float) -> None:
    """Compute every block of ``plan`` and merge it into ``acc``."""
    for blk in plan:
        out, lse = block_forward(q[:, :, blk.q0:blk.q1], k[:, :, blk.k0:blk.k1],
                                 v[:, :, blk.k0:blk.k1], scale=scale, causal=blk.causal)
        acc.add(blk, out, lse)


class GradAccumulator:
    """fp32 gradient sum over runs of positions (dim -2) that a plan's blocks reach.

    The first block to reach a run *writes* it and later ones add, so a fresh
    buffer is never zeroed and then read back (at 128K per rank that is GiBs of
    memory traffic per ring step); only runs no block reached are zeroed, once,
    by ``finish``. ``full=True`` wraps a buffer that already holds a running
    sum everywhere (the dK/dV arriving over the ring).
    """

    def __init__(self, buf: torch.Tensor, full: bool = False):
        self.buf = buf
        self.length = buf.shape[-2]
        self.covered: list[tuple[int, int]] = [(0, self.length)] if full else []

    def _gaps(self, lo: int, hi: int) -> list[tuple[int, int]]:
        gaps, at = [], lo
        for c0, c1 in self.covered:  # sorted, disjoint
            if c1 <= at or c0 >= hi:
                continue
            if c0 > at:
                gaps.append((at, c0))
            at = max(at, c1)
        if at < hi:
            gaps.append((at, hi))
        return gaps

    def _cover(self, lo: int, hi: int) -> None:
        merged = []
        for c0, c1 in sorted([*self.covered, (lo, hi)]):
            if merged and c0 <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], c1))
            else:
                merged.append((c0, c1))
        self.covered = merged

    def add(self, lo: int, hi: int, *grads: torch.Tensor) -> None:
        """Add ``grads`` (one per leading index of a stacked buffer, or one) at [lo, hi)."""
        targets = [self.buf] if len(grads) == 1 else list(self.buf)
        gaps = self._gaps(lo, hi)
        if gaps == [(lo, hi)]:  # nothing there yet: write
            for t, g in zip(targets, grads, strict=True):
                t[..., lo:hi, :].copy_(g)
        else:
            for g0, g1 in gaps:
                self.buf[..., g0:g1, :].zero_()
            for t, g in zip(targets, grads, strict=True):
                t[..., lo:hi, :] += g
        self._cover(lo, hi)

    def finish(self) -> torch.Tensor:
        for g0, g1 in self._gaps(0, self.length):
            self.buf[..., g0:g1, :].zero_()
        self.covered = [(0, self.length)]
        return self.buf


def backward_blocks(dout, q, k, v, out, lse, plan: list[ScoreBlock], scale: float,
                    dq: GradAccumulator) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Every block's gradients: dQ summed into ``dq`` now; ``(k0, k1, dK, dV)`` per block
    returned in the kernel's dtype, for the caller to add where their running sum is."""
    kv_grads = []
    for blk in plan:
        rows, cols = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
        gq, gk, gv = block_backward(dout[:, :, rows], q[:, :, rows], k[:, :, cols],
                                    v[:, :, cols], out[:, :, rows], lse[:, :, rows],
                                    scale=scale, causal=blk.causal)
        dq.add(blk.q0, blk.q1, gq)
        kv_grads.append((blk.k0, blk.k1, gk, gv))
    return kv_grads


def _is_whole(plan: list[ScoreBlock], q: torch.Tensor, k: torch.Tensor) -> bool:
    """True when the plan is one block covering every query row and kv column."""
    return (len(plan) == 1 and plan[0].q0 == 0 and plan[0].q1 == q.shape[2]
            and plan[0].k0 == 0 and plan[0].k1 == k.shape[2])


def plan_forward(q, k, v, plan: list[ScoreBlock], scale: float):
    """``(out, lse)`` of local queries against a local kv buffer; out in q's dtype."""
    if _is_whole(plan, q, k):  # one block over everything: the kernel's own output
        out, lse = block_forward(q, k, v, scale=scale, causal=plan[0].causal)
        return out.to(q.dtype), lse
    acc = Accumulator(q)
    forward_blocks(acc, q, k, v, plan, scale)
    return acc.out.to(q.dtype), acc.lse


def plan_backward(dout, q, k, v, out, lse, plan: list[ScoreBlock], scale: float):
    """``(dq, dk, dv)`` in the inputs' dtypes, accumulated in fp32 when several blocks."""
    dout = dout.contiguous()
    if _is_whole(plan, q, k):  # gradients straight from the kernel, no fp32 round trip
        dq, dk, dv = block_backward(dout, q, k, v, out, lse, scale=scale,
                                    causal=plan[0].causal)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    a = acc_dtype(q.dtype)
    dq = GradAccumulator(torch.empty(q.shape, dtype=a, device=q.device))
    # (B, Hkv, Lk, D) x 2 -> (2, B, Hkv, Lk, D): dK and dV in one fp32 buffer
    dkv = GradAccumulator(torch.empty((2, *k.shape), dtype=a, device=k.device))
    for k0, k1, gk, gv in backward_blocks(dout, q, k, v, out, lse, plan, scale, dq):
        dkv.add(k0, k1, gk, gv)
    grads = dkv.finish()
    return dq.finish().to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype)


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
