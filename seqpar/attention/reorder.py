"""Reordering a gathered sequence (rank order <-> global order) by runs, not by index.

Why: under zigzag a gathered sequence is 2P contiguous runs out of place.
``index_select`` moves it token by token, and its backward (``index_add`` into
zeros) measured 11.5 ms per iteration at 128K tokens on H200 (BENCHMARKS.md,
v4 profile); copying whole runs is one batched ``cat`` each way.
"""

from __future__ import annotations

import torch

#: beyond this many runs (striped with small blocks) a gather by index is cheaper
MAX_RUNS = 64

Pieces = list[tuple[int, int]]  # (source start, length), in output order


def pieces_for(index: torch.Tensor) -> Pieces:
    """Runs of ``out = x.index_select(dim, index)``: ``[(start in x, length)]`` in order."""
    idx = index.tolist()
    pieces: Pieces = []
    for i, src in enumerate(idx):
        if i and src == idx[i - 1] + 1:
            start, n = pieces[-1]
            pieces[-1] = (start, n + 1)
        else:
            pieces.append((src, 1))
    return pieces


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


def reorder(x: torch.Tensor, dim: int, index: torch.Tensor, inverse: torch.Tensor
            ) -> torch.Tensor:
    """``x.index_select(dim, index)`` (differentiable), where ``inverse`` is the inverse
    permutation of ``index``; by runs when there are few."""
    pieces = pieces_for(index)
    if len(pieces) > MAX_RUNS:
        return x.index_select(dim, index)
    return ReorderSeq.apply(x, dim, pieces, pieces_for(inverse))
