"""Differentiable collectives along the sequence dimension.

One autograd Function per primitive; each docstring says what happens in
forward and what in backward. Functions are no-ops for a group of one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .compat import all_gather_flat, reduce_scatter_flat
from .groups import group_rank_size
from .stats import record


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class PendingExchange:
    """Point-to-point messages in flight (an all-to-all started by ``start_seq_to_heads``
    or ``start_heads_to_seq``); ``wait()`` finishes them and returns the result."""

    def __init__(self, works: list, result: tuple[torch.Tensor, ...], finish=None, keep=()):
        self._works, self._result, self._finish = works, result, finish
        self._keep = keep  # send buffers that must live until the sends complete

    def wait(self) -> tuple[torch.Tensor, ...]:
        for work in self._works:
            work.wait()
        if self._finish is not None:
            self._finish()
        self._keep = ()
        return self._result


def _exchange(sends: list[tuple[int, torch.Tensor]], recvs: list[tuple[int, torch.Tensor]],
              group: dist.ProcessGroup) -> list:
    """One grouped set of point-to-point messages (a personalised all-to-all whose pieces
    go straight from and to where they live); ``sends``/``recvs``: (group rank, buffer)."""
    def peer(j: int) -> int:
        return j if group is None else dist.get_global_rank(group, j)

    ops = [dist.P2POp(dist.isend, t, peer(j), group) for j, t in sends]
    ops += [dist.P2POp(dist.irecv, t, peer(j), group) for j, t in recvs]
    record("all_to_all", sum(_nbytes(t) for _, t in sends))
    return dist.batch_isend_irecv(ops) if ops else []


#: How a tensor's heads are dealt to the ranks: ``[(first head, count), ...]`` per rank.
HeadSplit = tuple[tuple[int, int], ...]


def even_split(heads: int, world: int) -> HeadSplit:
    """Heads dealt as evenly as they go, the first ``heads % world`` ranks one more
    (DeepSpeed's uneven Ulysses: 7 heads on 2 ranks -> 4 + 3)."""
    base, extra = divmod(heads, world)
    counts = [base + (j < extra) for j in range(world)]
    return tuple((sum(counts[:j]), counts[j]) for j in range(world))


def start_seq_to_heads(tensors: tuple[torch.Tensor, ...], group: dist.ProcessGroup,
                       splits: tuple[HeadSplit | None, ...] | None = None) -> PendingExchange:
    """Start one exchange: (B, H_i, Ls, D) -> (B, h_i, P*Ls, D) on wait, where rank j gets
    the heads ``splits[i][j]`` of tensor i (default :func:`even_split`; uneven allowed).

    Head group j of each sequence goes to rank j as it lies in memory (contiguous:
    no packing copy); what arrives is interleaved once into the result on wait.
    """
    rank, world = group_rank_size(group)
    splits = splits or (None,) * len(tensors)
    sends, recvs, parts = [], [], []
    for t, split in zip(tensors, splits, strict=True):
        t = t.contiguous()
        b, hq, ls, d = t.shape
        split = split or even_split(hq, world)
        mine, h = split[rank]
        stage = t.new_empty(b, world, h, ls, d)  # [:, i]: from rank i (own slot unused)
        for j, (first, n) in enumerate(split):
            if j != rank:
                sends += [(j, t[i, first:first + n]) for i in range(b)]  # (n, Ls, D) each
                recvs += [(j, stage[i, j]) for i in range(b)]
        result = t.new_empty(b, h, world * ls, d)
        parts.append((result, stage, t[:, mine:mine + h]))
    works = _exchange(sends, recvs, group)

    def finish() -> None:
        for result, stage, own in parts:
            b, h, _, d = result.shape
            view = result.view(b, h, world, -1, d)  # sequence = (source rank, Ls)
            for j in range(world):
                view[:, :, j].copy_(own if j == rank else stage[:, j])

    return PendingExchange(works, tuple(r for r, _, _ in parts), finish)


def start_heads_to_seq(tensors: tuple[torch.Tensor, ...], group: dist.ProcessGroup,
                       splits: tuple[HeadSplit | None, ...] | None = None) -> PendingExchange:
    """Inverse of :func:`start_seq_to_heads`: (B, h_i, P*Ls, D) -> (B, H_i, Ls, D), rank j
    having held the heads ``splits[i][j]`` (default: an even split).

    Sequence slot j of each input is packed once and sent to rank j; what arrives
    from rank i lands directly in head group i of the result.
    """
    rank, world = group_rank_size(group)
    splits = splits or (None,) * len(tensors)
    sends, recvs, results, keep = [], [], [], []
    for t, split in zip(tensors, splits, strict=True):
        t = t.contiguous()
        b, h, l_full, d = t.shape
        ls = l_full // world
        split = split or even_split(h * world, world)
        slots = t.view(b, h, world, ls, d)  # [:, :, j]: sequence slot j -> rank j
        result = t.new_empty(b, sum(n for _, n in split), ls, d)
        for j, (first, n) in enumerate(split):
            if j == rank:
                result[:, first:first + n].copy_(slots[:, :, j])
                continue
            send = slots[:, :, j].contiguous()  # (B, h, Ls, D)
            keep.append(send)
            sends += [(j, send[i]) for i in range(b)]
            recvs += [(j, result[i, first:first + n]) for i in range(b)]  # head group j
        results.append(result)
    return PendingExchange(_exchange(sends, recvs, group), tuple(results), keep=tuple(keep))


def _seq_to_heads(tensors: tuple[torch.Tensor, ...], group: dist.ProcessGroup, splits=None):
    return start_seq_to_heads(tensors, group, splits).wait()


def _heads_to_seq(tensors: tuple[torch.Tensor, ...], group: dist.ProcessGroup, splits=None):
    return start_heads_to_seq(tensors, group, splits).wait()


class SeqToHeads(torch.autograd.Function):
    """Sequence-sharded -> head-sharded (DeepSpeed-Ulysses).

    Forward: one exchange of point-to-point pieces for all inputs together
    (:func:`start_seq_to_heads`: head group j of each sequence goes to rank j as it
    lies), ``(B, H_i, L/P, D) -> (B, H_i/P, L, D)`` for each input.
    Backward: the inverse exchange (:func:`start_heads_to_seq`) of the gradients.
    """

    @staticmethod
    def forward(ctx, group, splits, *tensors):
        ctx.group, ctx.splits = group, splits
        return _seq_to_heads(tensors, group, splits)

    @staticmethod
    def backward(ctx, *grads):
        grads = tuple(g.contiguous() for g in grads)
        return (None, None, *_heads_to_seq(grads, ctx.group, ctx.splits))


class HeadsToSeq(torch.autograd.Function):
    """Head-sharded -> sequence-sharded (the way back after Ulysses attention).

    Forward: one exchange of point-to-point pieces (:func:`start_heads_to_seq`),
    ``(B, H_i/P, L, D) -> (B, H_i, L/P, D)``.
    Backward: the inverse exchange (sequence -> heads) of the gradients.
    """

    @staticmethod
    def forward(ctx, group, splits, *tensors):
        ctx.group, ctx.splits = group, splits
        return _heads_to_seq(tensors, group, splits)

    @staticmethod
    def backward(ctx, *grads):
        grads = tuple(g.contiguous() for g in grads)
        return (None, None, *_seq_to_heads(grads, ctx.group, ctx.splits))


def _all_gather(x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    _, world = group_rank_size(group)
    # (..., Ls @ dim, ...) -> (Ls, ...) so that rank blocks are contiguous in memory
    x0 = x.movedim(dim, 0).contiguous()
    out = x0.new_empty((world * x0.shape[0], *x0.shape[1:]))
    all_gather_flat(out, x0, group=group)
    record("all_gather", _nbytes(x0) * (world - 1))
    # (P*Ls, ...) -> (..., P*Ls @ dim, ...)
    return out.movedim(0, dim)


def _reduce_scatter(x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    _, world = group_rank_size(group)
    # (..., P*Ls @ dim, ...) -> (P*Ls, ...)
    x0 = x.movedim(dim, 0).contiguous()
    out = x0.new_empty((x0.shape[0] // world, *x0.shape[1:]))
    reduce_scatter_flat(out, x0, group=group)
    record("reduce_scatter", _nbytes(out) * (world - 1))
    # (Ls, ...) -> (..., Ls @ dim, ...)
    return out.movedim(0, dim)


class AllGatherSeq(torch.autograd.Function):
    """Gather the sequence shards of every rank along ``dim`` (rank order).

    Forward: all-gather, ``L/P -> L`` along ``dim``.
    Backward: reduce-scatter of the gradient (each rank's contribution to every
    shard is summed onto the shard's owner).
    """

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.dim, ctx.group), None, None


class ReduceScatterSeq(torch.autograd.Function):
    """Sum partial full-length tensors and keep this rank's shard along ``dim``.

    Forward: reduce-scatter, ``L -> L/P`` along ``dim``.
    Backward: all-gather of the gradient.
    """

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.dim, ctx.group), None, None


def seq_to_heads(*tensors: torch.Tensor, group: dist.ProcessGroup | None,
                 splits: tuple[HeadSplit | None, ...] | None = None):
    """``(B, H_i, L/P, D) -> (B, H_i/P, L, D)`` for each tensor, in one all-to-all
    (``splits``: uneven head counts per rank, see :func:`start_seq_to_heads`)."""
    if group_rank_size(group)[1] == 1:
        return tensors
    return SeqToHeads.apply(group, splits, *tensors)


def heads_to_seq(*tensors: torch.Tensor, group: dist.ProcessGroup | None,
                 splits: tuple[HeadSplit | None, ...] | None = None):
    """``(B, H_i/P, L, D) -> (B, H_i, L/P, D)`` for each tensor, in one all-to-all."""
    if group_rank_size(group)[1] == 1:
        return tensors
    return HeadsToSeq.apply(group, splits, *tensors)


def all_gather_seq(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable all-gather along ``dim`` (backward: reduce-scatter)."""
    if group_rank_size(group)[1] == 1:
        return x
    return AllGatherSeq.apply(x, dim, group)


def reduce_scatter_seq(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable reduce-scatter along ``dim`` (backward: all-gather)."""
    if group_rank_size(group)[1] == 1:
        return x
    return ReduceScatterSeq.apply(x, dim, group)
