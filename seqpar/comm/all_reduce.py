"""A differentiable all-reduce (sum) over an explicit process group.

Used where every rank holds a *partial sum* of one tensor that all of them need
whole, e.g. Linformer's projected keys ``K' = sum_r E_r K_r`` under sequence
parallelism. Forward: ``y = sum_r x_r``, the same on every rank. Backward: each
rank uses its copy of ``y`` differently (its own queries), so rank r's
downstream gradient ``dy_r`` differs per rank, and ``x_r`` reaches every copy:
``dL/dx_r = sum_s dy_s`` -- again an all-reduce sum. (Returning ``dy_r`` alone,
"identity", would drop the other ranks' contributions.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .groups import group_rank_size
from .stats import record


def _all_reduce(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    out = x.contiguous().clone()  # never reduce into an autograd input in place
    record("all_reduce", out.numel() * out.element_size())
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


class AllReduceSum(torch.autograd.Function):
    """Forward: sum of ``x`` over ``group`` on every rank. Backward: the sum of the
    ranks' output gradients (also an all-reduce sum). ``record`` counts the payload
    (``x.nbytes``) per call; a ring all-reduce sends ``2 (P-1)/P`` of it per rank."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_reduce(grad, ctx.group), None


def all_reduce_sum(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable ``sum_r x_r`` over ``group``; the identity for a group of one
    (or without torch.distributed)."""
    if group_rank_size(group)[1] == 1:
        return x
    return AllReduceSum.apply(x, group)
