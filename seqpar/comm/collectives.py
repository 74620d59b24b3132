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


class Pending:
    """An exchange in flight; ``wait()`` returns its unpacked result."""

    def __init__(self, works, recv, unpack, keep=()):
        self._works = [w for w in (works if isinstance(works, list) else [works])
                       if w is not None]
        self._recv, self._unpack = recv, unpack
        self._keep = keep  # send buffers that must live until the sends complete

    def wait(self) -> tuple[torch.Tensor, ...]:
        for work in self._works:
            work.wait()
        out = self._unpack(self._recv)
        self._keep = ()
        return out


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup, async_op: bool = False):
    """All-to-all over dim 0 (which must have size P); records bytes sent.
    Returns the receive buffer, and the work handle when ``async_op``."""
    _, world = group_rank_size(group)
    out = torch.empty_like(x)
    work = dist.all_to_all_single(out, x, group=group, async_op=async_op)
    record("all_to_all", _nbytes(x) * (world - 1) // world)
    return (out, work) if async_op else out


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


def _direct(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether the point-to-point path applies: B = 1, so a head group (seq -> heads) or
    a rank's slot of the result (heads -> seq) is one contiguous run of memory."""
    return all(t.shape[0] == 1 and t.is_contiguous() for t in tensors)


def _start_seq_to_heads_direct(tensors, group) -> Pending:
    """B = 1: head group j of each input is sent to rank j as it lies (no packing copy);
    what arrives is interleaved once into (1, H_i/P, P*Ls, D)."""
    rank, world = group_rank_size(group)
    _, _, ls, d = tensors[0].shape
    sends, recvs, stages = [], [], []
    for t in tensors:
        h = t.shape[1] // world
        groups = t[0].view(world, h, ls, d)  # head group j -> rank j
        stage = torch.empty_like(groups)  # (P, H/P, Ls, D), dim 0 = source rank
        sends += [(j, groups[j]) for j in range(world) if j != rank]
        recvs += [(j, stage[j]) for j in range(world) if j != rank]
        stages.append((stage, groups[rank]))
    works = _exchange(sends, recvs, group)

    def unpack(stages):
        out = []
        for stage, mine in stages:
            h = stage.shape[1]
            full = stage.new_empty(1, h, world * ls, d)
            view = full[0].view(h, world, ls, d)  # sequence = (source rank, Ls)
            for j in range(world):
                view[:, j].copy_(mine if j == rank else stage[j])
            out.append(full)
        return tuple(out)

    return Pending(works, stages, unpack)


def _start_heads_to_seq_direct(tensors, group) -> Pending:
    """B = 1: sequence slot j of each input is packed once and sent to rank j; what
    arrives from rank i lands directly in head group i of the result."""
    rank, world = group_rank_size(group)
    _, _, l_full, d = tensors[0].shape
    ls = l_full // world
    sends, recvs, results, keep = [], [], [], []
    for t in tensors:
        h = t.shape[1]
        slots = t[0].view(h, world, ls, d)  # sequence slot j -> rank j
        result = t.new_empty(1, world * h, ls, d)
        groups = result[0].view(world, h, ls, d)  # head group i <- rank i
        for j in range(world):
            if j == rank:
                groups[j].copy_(slots[:, j])
            else:
                send = slots[:, j].contiguous()
                keep.append(send)
                sends.append((j, send))
                recvs.append((j, groups[j]))
        results.append(result)
    works = _exchange(sends, recvs, group)
    return Pending(works, tuple(results), lambda r: r, keep=tuple(keep))


def start_seq_to_heads(tensors: tuple[torch.Tensor, ...], group: dist.ProcessGroup) -> Pending:
    """Start one exchange: (B, H_i, Ls, D) -> (B, H_i/P, P*Ls, D) on wait."""
    if _direct(tensors):
        return _start_seq_to_heads_direct(tensors, group)
    _, world = group_rank_size(group)
    b, _, ls, d = tensors[0].shape
    heads = [t.shape[1] // world for t in tensors]
    # (B, H_i, Ls, D) -> (B, P, H_i/P, Ls, D), concatenated over i on dim 2
    packed = torch.cat([t.reshape(b, world, h, ls, d) for t, h in zip(tensors, heads)], dim=2)
    # (B, P, ΣH/P, Ls, D) -> (P, B, ΣH/P, Ls, D): dim 0 = destination rank
    recv, work = _all_to_all(packed.transpose(0, 1).contiguous(), group, async_op=True)

    def unpack(recv):
        # (P, B, ΣH/P, Ls, D) (dim 0 = source rank) -> (B, ΣH/P, P*Ls, D)
        full = recv.permute(1, 2, 0, 3, 4).reshape(b, sum(heads), world * ls, d)
        return tuple(t.contiguous() for t in full.split(heads, dim=1))

    return Pending(work, recv, unpack)


def start_heads_to_seq(tensors: tuple[torch.Tensor, ...], group: dist.ProcessGroup) -> Pending:
    """Inverse of :func:`start_seq_to_heads`: (B, H_i/P, P*Ls, D) -> (B, H_i, Ls, D)."""
    if _direct(tensors):
        return _start_heads_to_seq_direct(tensors, group)
    _, world = group_rank_size(group)
    b, _, l_full, d = tensors[0].shape
    ls = l_full // world
    heads = [t.shape[1] for t in tensors]
    # (B, H_i/P, P*Ls, D) -> (B, ΣH/P, P, Ls, D) -> (P, B, ΣH/P, Ls, D): dim 0 = destination
    packed = torch.cat(tensors, dim=1).reshape(b, sum(heads), world, ls, d)
    recv, work = _all_to_all(packed.permute(2, 0, 1, 3, 4).contiguous(), group, async_op=True)

    def unpack(recv):
        # (P, B, ΣH/P, Ls, D) (dim 0 = source rank = head group) -> (B, P, ΣH/P, Ls, D)
        recv = recv.transpose(0, 1)
        # each (B, P, H_i/P, Ls, D) -> (B, H_i, Ls, D)
        return tuple(part.reshape(b, world * part.shape[2], ls, d)
                     for part in recv.split(heads, dim=2))

    return Pending(work, recv, unpack)


def _seq_to_heads(tensors: tuple[torch.Tensor, ...], group: dist.ProcessGroup):
    return start_seq_to_heads(tensors, group).wait()


def _heads_to_seq(tensors: tuple[torch.Tensor, ...], group: dist.ProcessGroup):
    return start_heads_to_seq(tensors, group).wait()


class SeqToHeads(torch.autograd.Function):
    """Sequence-sharded -> head-sharded (DeepSpeed-Ulysses).

    Forward: one all-to-all of all inputs packed together,
    ``(B, H_i, L/P, D) -> (B, H_i/P, L, D)`` for each input.
    Backward: the inverse all-to-all of the packed gradients.
    """

    @staticmethod
    def forward(ctx, group, *tensors):
        ctx.group = group
        return _seq_to_heads(tensors, group)

    @staticmethod
    def backward(ctx, *grads):
        return (None, *_heads_to_seq(tuple(g.contiguous() for g in grads), ctx.group))


class HeadsToSeq(torch.autograd.Function):
    """Head-sharded -> sequence-sharded (the way back after Ulysses attention).

    Forward: one all-to-all, ``(B, H_i/P, L, D) -> (B, H_i, L/P, D)``.
    Backward: the inverse all-to-all (sequence -> heads) of the gradients.
    """

    @staticmethod
    def forward(ctx, group, *tensors):
        ctx.group = group
        return _heads_to_seq(tensors, group)

    @staticmethod
    def backward(ctx, *grads):
        return (None, *_seq_to_heads(tuple(g.contiguous() for g in grads), ctx.group))


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


def seq_to_heads(*tensors: torch.Tensor, group: dist.ProcessGroup | None):
    """``(B, H_i, L/P, D) -> (B, H_i/P, L, D)`` for each tensor, in one all-to-all."""
    if group_rank_size(group)[1] == 1:
        return tensors
    return SeqToHeads.apply(group, *tensors)


def heads_to_seq(*tensors: torch.Tensor, group: dist.ProcessGroup | None):
    """``(B, H_i/P, L, D) -> (B, H_i, L/P, D)`` for each tensor, in one all-to-all."""
    if group_rank_size(group)[1] == 1:
        return tensors
    return HeadsToSeq.apply(group, *tensors)


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
