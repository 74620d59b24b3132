"""Reordering a gathered sequence (rank order <-> global order): the one mechanism
that allgather (gathered K/V) and Ulysses (the all-to-all's full sequence) share.

Why by runs: under zigzag a gathered sequence is 2P contiguous runs out of place.
``index_select`` moves it token by token, and its backward (``index_add`` into
zeros) measured 11.5 ms per iteration at 128K tokens on H200 (BENCHMARKS.md,
v4 profile); copying whole runs is one batched ``cat`` each way. Beyond
``MAX_RUNS`` runs (striped with small blocks) a gather by index is cheaper.
"""

from __future__ import annotations

import functools

import torch

from ..layout import Layout, Runs, merge_runs

#: beyond this many runs (striped with small blocks) a gather by index is cheaper
MAX_RUNS = 64


@functools.lru_cache(maxsize=256)
def rank_order_pieces(layout: Layout, world: int, length: int,
                      slices: tuple[int, ...] | None = None) -> tuple[Runs, Runs]:
    """``(to_global, to_rank)``: runs (source start, length), in output order, that put a
    sequence gathered in rank order (or in the order of ``slices``) into global order,
    and back. Built from the layout's segments (O(runs), no per-token work: a per-token
    pass on the host measured ~50 ms per call at 128K)."""
    runs, offset = [], 0  # (global start, length, offset in rank order)
    for r in range(world) if slices is None else slices:
        for start, n in layout.segments(r, world, length):
            runs.append((start, n, offset))
            offset += n
    to_global = merge_runs([(o, n) for _, n, o in sorted(runs)])
    to_rank = merge_runs([(g, n) for g, n, _ in runs])
    return to_global, to_rank


def take_pieces(x: torch.Tensor, dim: int, pieces: Runs) -> torch.Tensor:
    """``cat([x[start:start+n] along dim for each piece])``."""
    return torch.cat([x.narrow(dim, s, n) for s, n in pieces], dim=dim)


class SeqOrder:
    """How a sequence of ``length`` gathered in rank order (or ``slices`` order) maps to
    global order: ``to_global`` / ``to_rank`` along any dim, by runs when there are
    at most ``MAX_RUNS``, else by index. Plain tensor ops; autograd callers pair them."""

    def __init__(self, layout: Layout, world: int, length: int, device: torch.device,
                 slices: tuple[int, ...] | None = None):
        self.pieces = rank_order_pieces(layout, world, length, slices)
        self.index = None
        if len(self.pieces[0]) > MAX_RUNS:
            self.index = layout.rank_order(world, length, device, slices)  # (order, inverse)

    def to_global(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.index is not None:
            return x.index_select(dim, self.index[1])
        return take_pieces(x, dim, self.pieces[0])

    def to_rank(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.index is not None:
            return x.index_select(dim, self.index[0])
        return take_pieces(x, dim, self.pieces[1])


class ReorderSeq(torch.autograd.Function):
    """Forward: rank order -> global order along ``dim``.
    Backward: the inverse reordering of the gradient (a permutation: no ``index_add``)."""

    @staticmethod
    def forward(ctx, x, dim: int, order: SeqOrder):
        ctx.dim, ctx.order = dim, order
        return order.to_global(x, dim)

    @staticmethod
    def backward(ctx, grad):
        return ctx.order.to_rank(grad, ctx.dim), None, None


def to_global_order(x: torch.Tensor, dim: int, layout: Layout, world: int) -> torch.Tensor:
    """A sequence gathered in rank order along ``dim`` -> global order (differentiable)."""
    return ReorderSeq.apply(x, dim, SeqOrder(layout, world, x.shape[dim], x.device))
