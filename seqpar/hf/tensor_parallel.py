"""Megatron TP-SP for the HF module names of the supported families.

The same scheme as ``seqpar.parallel.tensor_parallel`` for the native model:
``q/k/v_proj`` and ``gate/up_proj`` keep a slice of the output features (whole
heads), ``o_proj``/``down_proj`` a slice of the input features; between TP regions
the residual stream is split along the sequence over the tp group. Each
``self_attn`` and ``mlp`` all-gathers its input once (a forward pre-hook) and the
row-parallel output is reduce-scattered back; the rotary tables are gathered
once per forward so they match the gathered length. The sp attention then runs
over its own group with the rank's Hq/tp and Hkv/tp heads.

A rank's tokens are the ``tp_rank``-th contiguous chunk of its sp shard
(``shard_batch(..., tp_group=)``). Gradients: the returned tp-sharded
parameters are partial over the sp (and dp) ranks only; every other parameter
(embeddings, norms, lm_head, row-parallel biases) also over tp, so sum those
over all ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..comm.groups import group_rank_size
from ..comm.tensor_parallel import gather_from_sp, reduce_scatter_to_sp
from .families import decoder_layers

_COLUMN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
           "mlp.up_proj")
_ROW = ("self_attn.o_proj", "mlp.down_proj")


def _slice(t: torch.Tensor, dim: int, group) -> torch.Tensor:
    rank, world = group_rank_size(group)
    # (..., F @ dim, ...) -> (..., F/tp @ dim, ...): this rank's contiguous slice
    return t.detach().chunk(world, dim=dim)[rank].clone()


class ColumnParallelLinear(nn.Module):
    """``Y[..., out/tp] = X W_r^T + b_r`` with this rank's output rows (and bias)."""

    def __init__(self, linear: nn.Linear, group):
        super().__init__()
        self.weight = nn.Parameter(_slice(linear.weight, 0, group))
        self.bias = None if linear.bias is None else nn.Parameter(_slice(linear.bias, 0, group))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # (B, L, in) -> (B, L, out/tp)


class RowParallelLinear(nn.Module):
    """``Y = Σ_r X_r W_r^T (+ b)``; the sum over tp is a reduce-scatter along the sequence."""

    def __init__(self, linear: nn.Linear, group):
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(_slice(linear.weight, 1, group))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight)  # (B, L, in/tp) -> (B, L, out), partial sum
        out = reduce_scatter_to_sp(partial, 1, self.group)  # -> (B, L/tp, out)
        return out if self.bias is None else out + self.bias


def _gather_input(group):
    """Pre-hook: all-gather ``hidden_states`` (positional or keyword) along the sequence."""

    def hook(module, args, kwargs):
        # (B, L/tp, C) -> (B, L, C)
        if args:
            return (gather_from_sp(args[0], 1, group), *args[1:]), kwargs
        kwargs["hidden_states"] = gather_from_sp(kwargs["hidden_states"], 1, group)
        return args, kwargs

    return hook


def _gather_rope(group):
    """Hook on the rotary module: cos/sin ``(B, L/tp, D) -> (B, L, D)`` once per forward."""

    def hook(module, args, output):
        return tuple(gather_from_sp(t, 1, group) for t in output)

    return hook


def apply_tensor_parallel(model: nn.Module, group) -> dict[str, int]:
    """Shard every decoder layer's attention and MLP over ``group`` (TP-SP), in place.

    Returns ``{parameter name: dim of the dense tensor it splits}`` for the tp-sharded
    parameters (0: column, 1: row); all other parameters are replicated. Raises
    ``ValueError`` (before any collective) when heads or features do not split.
    """
    _, tp = group_rank_size(group)
    if tp == 1:
        return {}
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    if hq % tp or hkv % tp or cfg.intermediate_size % tp:
        raise ValueError(f"tp={tp} must divide the query heads ({hq}), the kv heads ({hkv}) "
                         f"and intermediate_size ({cfg.intermediate_size})")
    base = getattr(model, "model", model)
    prefix = "model." if base is not model else ""
    sharded: dict[str, int] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for path, cls, dim in [(p, ColumnParallelLinear, 0) for p in _COLUMN] + \
                              [(p, RowParallelLinear, 1) for p in _ROW]:
            parent_name, name = path.split(".")
            parent = getattr(layer, parent_name)
            new = cls(getattr(parent, name), group)
            setattr(parent, name, new)
            full = f"{prefix}layers.{i}.{path}"
            sharded[f"{full}.weight"] = dim
            if cls is ColumnParallelLinear and new.bias is not None:
                sharded[f"{full}.bias"] = 0
        layer.self_attn.register_forward_pre_hook(_gather_input(group), with_kwargs=True)
        layer.mlp.register_forward_pre_hook(_gather_input(group), with_kwargs=True)
    base.rotary_emb.register_forward_hook(_gather_rope(group))
    return sharded
