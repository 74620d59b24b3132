"""Tensor-parallel (Megatron) communication, with and without sequence parallelism.

Megatron TP splits a column-parallel linear (output features sharded) and the
following row-parallel linear (input features sharded) over the tp group, so a
block needs one collective on the way in and one on the way out:

============================  ==========================  ==========================
region boundary               forward                     backward
============================  ==========================  ==========================
enter, plain TP (``f``)       identity                    all-reduce of dX
leave, plain TP (``g``)       all-reduce of partial Y     identity
enter, TP-SP                  all-gather X along seq      reduce-scatter dX along seq
leave, TP-SP                  reduce-scatter Y along seq  all-gather dY along seq
============================  ==========================  ==========================

With sequence parallelism (Korthikanti et al. 2022) the activations outside
the TP region (norms, residual stream, dropout) are sharded along the sequence
across the tp group instead of replicated: the same bytes move as with plain
TP (all-reduce = reduce-scatter + all-gather), and those activations take 1/tp
of the memory. The TP-SP pair is :class:`~seqpar.comm.AllGatherSeq` /
:class:`~seqpar.comm.ReduceScatterSeq`, re-exported under Megatron's names.
All functions are no-ops for a group of one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .collectives import all_gather_seq, reduce_scatter_seq
from .groups import group_rank_size
from .stats import record


def _all_reduce(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    _, world = group_rank_size(group)
    out = x.contiguous().clone()
    dist.all_reduce(out, group=group)
    # ring all-reduce: each rank sends 2 (P-1)/P of the buffer
    record("all_reduce", 2 * out.numel() * out.element_size() * (world - 1) // world)
    return out


class CopyToTensorParallelRegion(torch.autograd.Function):
    """Megatron's ``f``: enter a TP region with replicated activations.

    Forward: identity (every tp rank already holds the full ``X``).
    Backward: all-reduce of ``dX`` (each rank's column shard contributed part of it).
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class ReduceFromTensorParallelRegion(torch.autograd.Function):
    """Megatron's ``g``: leave a TP region by summing the row-parallel partial outputs.

    Forward: all-reduce of the partial ``Y``.
    Backward: identity (``dY`` is needed unchanged by every rank).
    """

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Enter a plain TP region: identity forward, all-reduce backward."""
    if group_rank_size(group)[1] == 1:
        return x
    return CopyToTensorParallelRegion.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Leave a plain TP region: all-reduce forward, identity backward."""
    if group_rank_size(group)[1] == 1:
        return x
    return ReduceFromTensorParallelRegion.apply(x, group)


def gather_from_sp(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Enter a TP-SP region: ``(B, L/tp, C) -> (B, L, C)`` (all-gather along ``dim``);
    backward reduce-scatters ``dX`` back to the sequence shards."""
    return all_gather_seq(x, dim, group)


def reduce_scatter_to_sp(x: torch.Tensor, dim: int,
                         group: dist.ProcessGroup | None) -> torch.Tensor:
    """Leave a TP-SP region: partial ``(B, L, C) -> (B, L/tp, C)`` summed over tp
    (reduce-scatter along ``dim``); backward all-gathers ``dY``."""
    return reduce_scatter_seq(x, dim, group)


__all__ = [
    "CopyToTensorParallelRegion",
    "ReduceFromTensorParallelRegion",
    "copy_to_tp",
    "gather_from_sp",
    "reduce_from_tp",
    "reduce_scatter_to_sp",
]
