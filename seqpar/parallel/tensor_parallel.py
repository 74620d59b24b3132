"""Megatron tensor parallelism with sequence parallelism, applied to a plain model.

Column-parallel linears keep a slice of the output features, row-parallel
linears a slice of the input features; the parameter keeps the name
``weight`` so checkpoints and optimizers see the same names as the dense
model. Between two TP regions the residual stream is sharded along the
sequence across the tp group (TP-SP): each attention / MLP module all-gathers
its input once (a forward pre-hook, so q, k and v share one gather) and its
row-parallel output is reduce-scattered back to sequence shards. The RoPE
tables are gathered once per forward so they match the gathered length.

Which parameters are tp shards, and along which dim of the dense weight, is
declared by the layer types (``shard_dim`` of each class) and read off the
model by :func:`tp_plan`, never guessed from parameter names: gradient sync,
clipping and checkpoints all read that one plan.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..comm.groups import group_rank_size
from ..comm.tensor_parallel import gather_from_sp, reduce_from_tp, reduce_scatter_to_sp


def _shard(weight: torch.Tensor, dim: int, group) -> torch.Tensor:
    rank, world = group_rank_size(group)
    if weight.shape[dim] % world:
        raise ValueError(f"cannot split dim {dim} of size {weight.shape[dim]} over tp={world}")
    # (..., F @ dim, ...) -> (..., F/tp @ dim, ...): this rank's contiguous slice
    return weight.detach().chunk(world, dim=dim)[rank].clone()


class ColumnParallelLinear(nn.Module):
    """``Y[..., out/tp] = X W_r^T`` with ``W_r`` the rank's rows ``(out/tp, in)``.

    ``gather_input=True`` all-gathers ``X`` along ``seq_dim`` first (TP-SP entry:
    ``(B, L/tp, in) -> (B, L, in)``); leave it False when a module pre-hook
    already gathered the input for several column-parallel linears.
    """

    #: the dense weight ``(out, in)`` is split along its output features
    shard_dim = 0

    def __init__(self, weight: torch.Tensor, group, *, gather_input: bool = False,
                 seq_dim: int = 1):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.group, self.gather_input, self.seq_dim = group, gather_input, seq_dim

    @classmethod
    def from_linear(cls, linear: nn.Linear, group, **kwargs) -> ColumnParallelLinear:
        """Shard a dense ``nn.Linear`` (no bias) by output features."""
        if linear.bias is not None:
            raise ValueError("ColumnParallelLinear.from_linear: bias is not supported")
        return cls(_shard(linear.weight, 0, group), group, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gather_input:
            x = gather_from_sp(x, self.seq_dim, self.group)  # (B, L/tp, in) -> (B, L, in)
        return F.linear(x, self.weight)  # (B, L, in) -> (B, L, out/tp)


class RowParallelLinear(nn.Module):
    """``Y = Σ_r X_r W_r^T`` with ``W_r`` the rank's columns ``(out, in/tp)``.

    The sum over ranks is a reduce-scatter along ``seq_dim`` when
    ``sequence_parallel`` (``(B, L, out) -> (B, L/tp, out)``), else an all-reduce.
    """

    #: the dense weight ``(out, in)`` is split along its input features
    shard_dim = 1

    def __init__(self, weight: torch.Tensor, group, *, sequence_parallel: bool = True,
                 seq_dim: int = 1):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.group, self.sequence_parallel, self.seq_dim = group, sequence_parallel, seq_dim

    @classmethod
    def from_linear(cls, linear: nn.Linear, group, **kwargs) -> RowParallelLinear:
        """Shard a dense ``nn.Linear`` (no bias) by input features."""
        if linear.bias is not None:
            raise ValueError("RowParallelLinear.from_linear: bias is not supported")
        return cls(_shard(linear.weight, 1, group), group, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight)  # (B, L, in/tp) -> (B, L, out), partial sum
        if self.sequence_parallel:
            return reduce_scatter_to_sp(partial, self.seq_dim, self.group)  # -> (B, L/tp, out)
        return reduce_from_tp(partial, self.group)


def _gather_input_hook(group, seq_dim: int = 1):
    """Forward pre-hook: all-gather the module's first argument along the sequence."""

    def hook(module, args):
        # (B, L/tp, C) -> (B, L, C)
        return (gather_from_sp(args[0], seq_dim, group), *args[1:])

    return hook


def _gather_rope_hook(group):
    """Forward hook on the RoPE module: gather cos/sin ``(L/tp, D) -> (L, D)`` once."""

    def hook(module, args, output):
        with torch.no_grad():
            return tuple(gather_from_sp(t, 0, group) for t in output)

    return hook


TPPlan = dict[str, int]
"""Parameter name -> the dim of its dense weight that tensor parallelism splits."""


def tp_plan(model: nn.Module) -> TPPlan:
    """The tp shards of ``model``, found by module type: every ``weight`` of a
    :class:`ColumnParallelLinear` (dim 0) or :class:`RowParallelLinear` (dim 1).

    Names are whatever the model calls those modules, so a renamed layer or
    another model's TP layers are found just the same.
    """
    return {f"{name}.weight" if name else "weight": module.shard_dim
            for name, module in model.named_modules()
            if isinstance(module, (ColumnParallelLinear, RowParallelLinear))}


def apply_tensor_parallel(model: nn.Module, group: dist.ProcessGroup | None) -> TPPlan:
    """Shard every block's attention and MLP over ``group`` (Megatron TP-SP), in place.

    Returns the :func:`tp_plan` of the result: the parameters that are now tp
    shards and their split dim (their gradients are complete per tp rank; every
    other parameter sees only 1/tp of the tokens and its gradient must also be
    summed over the tp group).
    """
    _, tp = group_rank_size(group)
    if tp == 1:
        return {}
    for block in model.layers:
        attn, mlp = block.attention, block.feed_forward
        for name in ("wq", "wk", "wv"):
            setattr(attn, name, ColumnParallelLinear.from_linear(getattr(attn, name), group))
        attn.wo = RowParallelLinear.from_linear(attn.wo, group)
        for name in ("w1", "w3"):
            if hasattr(mlp, name):
                setattr(mlp, name, ColumnParallelLinear.from_linear(getattr(mlp, name), group))
        mlp.w2 = RowParallelLinear.from_linear(mlp.w2, group)
        attn.register_forward_pre_hook(_gather_input_hook(group))
        mlp.register_forward_pre_hook(_gather_input_hook(group))
    model.rope.register_forward_hook(_gather_rope_hook(group))
    return tp_plan(model)
