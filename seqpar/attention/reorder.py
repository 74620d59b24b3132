"""Reordering a gathered sequence (rank order <-> global order) by runs, not by index.

Why: under zigzag a gathered sequence is 2P contiguous runs out of place.
``index_select`` moves it token by token, and its backward (``index_add`` into
zeros) measured 11.5 ms per iteration at 128K tokens on H200 (BENCHMARKS.md,
v4 profile); copying whole runs is one batched ``cat`` each way.
"""

from __future__ import annotations

import functools

import torch

from ..layout import Layout

#: beyond this many runs (striped with small blocks) a gather by index is cheaper
MAX_RUNS = 64

Pieces = list[tuple[int, int]]  # (source start, length), in output order


def _merge(pieces: Pieces) -> Pieces:
    out: Pieces = []
    for s, n in pieces:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((s, n))
    return out


@functools.lru_cache(maxsize=256)
def rank_order_pieces(layout: Layout, world: int, length: int) -> tuple[Pieces, Pieces]:
    """``(to_global, to_rank)``: runs that put a sequence gathered in rank order into
    global order, and back. Built from the layout's segments (O(runs), no per-token work:
    a per-token pass on the host measured ~50 ms per call at 128K)."""
    runs, offset = [], 0  # (global start, length, offset in rank order)
    for r in range(world):
        for start, n in layout.segments(r, world, length):
            runs.append((start, n, offset))
            offset += n
    to_global = _merge([(o, n) for _, n, o in sorted(runs)])
    to_rank = _merge([(g, n) for g, n, _ in runs])
    return to_global, to_rank


def take_pieces(x: torch.Tensor, dim: int, pieces: Pieces) -> torch.Tensor:
    """``cat([x[start:start+n] along dim for each piece])``."""
    return torch.cat([x.narrow(dim, s, n) for s, n in pieces], dim=dim)


class ReorderSeq(torch.autograd.Function):
    """Forward: runs ``pieces`` of ``x`` along ``dim``, in order.
    Backward: the inverse reordering of the gradient (also by runs)."""

    @staticmethod
    def forward(ctx, x, dim: int, pieces: Pieces, inverse_pieces: Pieces):
        ctx.dim, ctx.inverse_pieces = dim, inverse_pieces
        return take_pieces(x, dim, pieces)

    @staticmethod
    def backward(ctx, grad):
        return take_pieces(grad, ctx.dim, ctx.inverse_pieces), None, None, None


def to_global_order(x: torch.Tensor, dim: int, layout: Layout, world: int) -> torch.Tensor:
    """A sequence gathered in rank order along ``dim`` -> global order (differentiable);
    by runs when there are few, else by index (striped with small blocks)."""
    length = x.shape[dim]
    to_global, to_rank = rank_order_pieces(layout, world, length)
    if len(to_global) > MAX_RUNS:
        _, inverse = layout.rank_order(world, length, x.device)
        return x.index_select(dim, inverse)
    return ReorderSeq.apply(x, dim, to_global, to_rank)
