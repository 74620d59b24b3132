"""The paper's baseline: plain Megatron tensor parallelism (Shoeybi et al. 2019) on
seqpar's model, *without* sequence parallelism, plus the TP-SP variant as a second row.

Plain TP keeps the whole sequence on every tp rank: the residual stream, norms
and embeddings are replicated, and each block is one column-parallel entry
(``f``: identity forward, all-reduce of dX backward, :func:`~seqpar.comm.copy_to_tp`)
and one row-parallel exit (``g``: all-reduce forward, :func:`~seqpar.comm.reduce_from_tp`).
That is the layout whose replicated ``B·L·H`` activations the paper charges
to tensor parallelism. Its TP degree is limited by the head count (each rank needs
whole heads). The TP-SP variant (Korthikanti et al. 2022) is seqpar's own
:func:`seqpar.parallel.tensor_parallel.apply_tensor_parallel`.

Gradients: every parameter's gradient is complete on every tp rank under plain
TP (tp shards see all tokens; replicated parameters get the all-reduced dX), so
no gradient reduction is needed when tp is the only parallelism.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.nn as nn

from ...comm.groups import group_rank_size
from ...comm.tensor_parallel import copy_to_tp
from ...parallel.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    TPPlan,
    apply_tensor_parallel,
    tp_plan,
)


def tp_problems(n_heads: int, ffn_dim: int, tp: int) -> list[str]:
    """Why ``tp`` ranks cannot split this model (empty if they can): whole heads per rank."""
    out = []
    if tp > n_heads:
        out.append(f"tensor parallelism cannot use more GPUs ({tp}) than heads ({n_heads})")
    elif n_heads % tp:
        out.append(f"n_heads={n_heads} is not divisible by tp={tp}")
    if ffn_dim % tp:
        out.append(f"ffn_dim={ffn_dim} is not divisible by tp={tp}")
    return out


def _enter_tp_hook(group):
    """Forward pre-hook: Megatron's ``f`` on the module's input (replicated X)."""

    def hook(module, args):
        return (copy_to_tp(args[0], group), *args[1:])

    return hook


def apply_megatron_tp(model: nn.Module, group: dist.ProcessGroup | None) -> TPPlan:
    """Shard every block's attention and MLP over ``group``, sequence replicated (in place).

    Returns the tp plan (parameter -> split dim of the dense weight).
    """
    _, tp = group_rank_size(group)
    if tp == 1:
        return {}
    cfg = model.cfg
    bad = tp_problems(cfg.n_heads, cfg.ffn_dim, tp) + tp_problems(cfg.n_kv_heads, cfg.ffn_dim, tp)
    if bad:
        raise ValueError("Megatron TP: " + "; ".join(dict.fromkeys(bad)))
    for block in model.layers:
        attn, mlp = block.attention, block.feed_forward
        for name in ("wq", "wk", "wv"):
            setattr(attn, name, ColumnParallelLinear.from_linear(getattr(attn, name), group))
        attn.wo = RowParallelLinear.from_linear(attn.wo, group, sequence_parallel=False)
        for name in ("w1", "w3"):
            if hasattr(mlp, name):
                setattr(mlp, name, ColumnParallelLinear.from_linear(getattr(mlp, name), group))
        mlp.w2 = RowParallelLinear.from_linear(mlp.w2, group, sequence_parallel=False)
        attn.register_forward_pre_hook(_enter_tp_hook(group))
        mlp.register_forward_pre_hook(_enter_tp_hook(group))
    return tp_plan(model)


def apply_megatron_tp_sp(model: nn.Module, group: dist.ProcessGroup | None) -> TPPlan:
    """Megatron TP with sequence parallelism: seqpar's TP-SP, after the same head check."""
    _, tp = group_rank_size(group)
    bad = tp_problems(model.cfg.n_heads, model.cfg.ffn_dim, tp)
    if bad:
        raise ValueError("Megatron TP-SP: " + "; ".join(bad))
    return apply_tensor_parallel(model, group)
