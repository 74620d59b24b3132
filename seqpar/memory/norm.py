"""A lean RMSNorm: the same values, but backward recomputes instead of storing.

Why: autograd through :class:`seqpar.models.RMSNorm` keeps, per token, the fp32
input and the fp32 normalized tensor (``8 d`` bytes) beside the output, in every
layer whose activations are stored and in the working set of the block being
recomputed. At 8B and 512K local tokens that is 16 GiB per norm. Here one
autograd Function saves only the input (in the compute dtype, usually alive
anyway as the residual stream) and the weight, and its backward recomputes the
fp32 statistics: one more reduction over ``d`` per token, no matmul.

``--mlp-chunk`` applies it (the long-sequence configuration); the planner counts a
norm as ``2 b d`` per token then instead of ``(8 + b) d``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..models.transformer import RMSNorm


class LeanRMSNormFunction(torch.autograd.Function):
    """``(x (..., d), weight (d,), eps) -> x * rsqrt(mean(x^2) + eps) * weight`` in fp32,
    cast to x's dtype; saves only ``x`` and ``weight``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # as RMSNorm.forward
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return (xf * weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        xf, gf = x.float(), grad.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + ctx.eps)  # (..., 1)
        xhat = xf * rstd  # (..., d), recomputed
        gxhat = gf * weight.float()  # dL/dxhat
        # d(x * rstd)/dx: rstd * (g - xhat * mean(g * xhat))
        dx = rstd * (gxhat - xhat * (gxhat * xhat).mean(-1, keepdim=True))
        # (..., d) -> (tokens, d) -> (d,)
        dweight = (gf * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        return dx.to(x.dtype), dweight.to(weight.dtype), None


class LeanRMSNorm(RMSNorm):
    """:class:`RMSNorm` with the lean backward (same parameters and names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LeanRMSNormFunction.apply(x, self.weight, self.eps)


def apply_lean_norm(model: nn.Module) -> int:
    """Turn every :class:`RMSNorm` of ``model`` into a :class:`LeanRMSNorm` in place
    (before ``fully_shard``); returns how many. LayerNorms are left alone."""
    count = 0
    for module in model.modules():
        if type(module) is RMSNorm:
            module.__class__ = LeanRMSNorm
            count += 1
    return count


__all__ = ["LeanRMSNorm", "LeanRMSNormFunction", "apply_lean_norm"]
