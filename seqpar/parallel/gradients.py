"""Gradient bookkeeping after backward: where gradients are partial, and the global norm.

The loss each rank backpropagates is its *share* of the global mean
(``local_sum / global_count``), so every reduction here is a plain SUM.
Parameters the tp plan declares sharded (:func:`~seqpar.parallel.tp_plan`, read
off the layer types) saw every token of their sp shard through the TP
all-gather and are summed over ``dp x sp``; every other parameter (norms,
embeddings, head) saw ``1/tp`` of those tokens and is summed over the whole
world. FSDP2 already summed over ``dp x sp`` in its reduce-scatter.

The clipping norm counts each element of the dense model once: FSDP shards
are summed over ``dp x sp``, tp shards over tp, replicated parameters are not
summed again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn as nn

if TYPE_CHECKING:
    from .parallelize import Parallelized


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def split_params(par: Parallelized) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters as (tp shards per the plan, everything else), without the
    sequence-sharded ones (:func:`seq_sharded_params`)."""
    tp_params, rep_params = [], []
    for name, p in par.model.named_parameters():
        if p.requires_grad and name not in par.seq_sharded:
            (tp_params if name in par.tp_plan else rep_params).append(p)
    return tp_params, rep_params


def seq_sharded_params(par: Parallelized) -> list[nn.Parameter]:
    """Parameters split along the sequence over sp (Linformer's E/F): their gradient is
    exact per sp rank and only summed over dp replicas; FSDP never touches them."""
    return [p for name, p in par.model.named_parameters()
            if name in par.seq_sharded and p.requires_grad]


@torch.no_grad()
def sync_gradients(par: Parallelized) -> None:
    """Sum gradients where the autograd graph left them partial (see module doc)."""
    if par.mesh is None:
        return
    tp_params, rep_params = split_params(par)
    dims = par.dims
    if dims.dp > 1:
        all_reduce_grads([p.grad for p in seq_sharded_params(par)], par.group("dp"))
    if par.fsdp:  # FSDP summed over dp x sp already; replicated params need tp too
        if dims.tp > 1:
            all_reduce_grads([local(p.grad) for p in rep_params], par.group("tp"))
        return
    if dims.dp * dims.sp > 1:
        all_reduce_grads([p.grad for p in tp_params], par.group("dp_sp"))
    if dist.get_world_size() > 1:
        all_reduce_grads([p.grad for p in rep_params], par.group("world"))


@torch.no_grad()
def clip_grad_norm(par: Parallelized, max_norm: float) -> float:
    """Global L2 norm of all gradients (each element counted once); scale to ``max_norm``.

    Returns the norm before clipping as a float (one host sync; the training step uses
    :func:`clip_grad_norm_tensor`, which leaves it on the device). ``max_norm <= 0``
    only measures.
    """
    return clip_grad_norm_tensor(par, max_norm).item()


@torch.no_grad()
def clip_grad_norm_tensor(par: Parallelized, max_norm: float, *,
                          uncounted: frozenset[int] = frozenset(),
                          across=None) -> torch.Tensor:
    """:func:`clip_grad_norm` without a host sync: the norm is a 0-d float64 tensor on
    the device and the clip factor ``max_norm / (norm + 1e-6)`` (1 when the norm is
    within ``max_norm``) multiplies every gradient whatever its value (x1 is exact).

    For pipeline stages (:func:`seqpar.parallel.pipeline.pipeline_clip_grad_norm`):
    parameters whose ``id`` is in ``uncounted`` are clipped but not counted (a tied
    copy counted on another stage), and ``across`` sums the squared norm over a
    group of model parts (the pp group)."""
    tp_params, rep_params = split_params(par)
    seq_params = seq_sharded_params(par)
    device = next(par.model.parameters()).device
    sq = torch.zeros(2, dtype=torch.float64, device=device)  # (tp shards, the rest)
    seq_sq = torch.zeros(1, dtype=torch.float64, device=device)  # sequence shards
    for p in seq_params:
        if p.grad is not None:
            seq_sq += p.grad.double().pow(2).sum()
    if seq_params:  # each element once: summed over sp, not dp (replicas)
        dist.all_reduce(seq_sq, group=par.group("sp"))
    for i, params in enumerate((tp_params, rep_params)):
        for p in params:
            if p.grad is not None and id(p) not in uncounted:
                sq[i] += local(p.grad).double().pow(2).sum()
    if par.mesh is not None:
        if par.fsdp and par.dims.dp * par.dims.sp > 1:
            dist.all_reduce(sq, group=par.group("dp_sp"))  # FSDP shards -> full params
        if par.dims.tp > 1:
            tp_sq = sq[0].clone()
            dist.all_reduce(tp_sq, group=par.group("tp"))  # tp shards -> full weights
            sq[0] = tp_sq
    norm_sq = sq.sum() + seq_sq.sum()
    if across is not None:
        dist.all_reduce(norm_sq, group=across)  # model parts -> the whole model
    norm = norm_sq.sqrt()
    if max_norm > 0:
        coef = torch.where(norm > max_norm, max_norm / (norm + 1e-6), torch.ones_like(norm))
        grads = [local(p.grad) for p in tp_params + rep_params + seq_params
                 if p.grad is not None]
        for g in grads:
            g.mul_(coef.to(g.dtype))
    return norm


def all_reduce_grads(grads: list[torch.Tensor | None], group, bucket_numel: int = 2**25) -> None:
    """SUM-all-reduce gradients in flat buckets (one collective per ~128 MB of fp32)."""
    grads = [g for g in grads if g is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads + [None]:
        if g is not None:
            bucket.append(g)
            size += g.numel()
        if bucket and (g is None or size >= bucket_numel):
            flat = torch.cat([b.reshape(-1) for b in bucket])  # n x (numel_i,) -> (Σ numel_i,)
            dist.all_reduce(flat, group=group)
            for b, chunk in zip(bucket, flat.split([b.numel() for b in bucket])):
                b.copy_(chunk.view_as(b))
            bucket, size = [], 0
