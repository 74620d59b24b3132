"""Materialise a model built on the meta device shard by shard.

Why: building an 8B model eagerly puts all of it (32 GB in fp32) on every GPU or
in every process's host memory before FSDP2 shards it. Instead the model is
constructed under ``torch.device("meta")`` (no storage), parallelised (TP,
checkpointing, ``fully_shard``: all metadata work), then ``to_empty`` gives each
rank storage for exactly its own shards and :func:`init_shards` fills them with
:mod:`seqpar.models.init`'s deterministic values (a function of seed, name and
row only), so sp/dp/tp degrees all start from the weights of the one-process run.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from ..models.init import fill_region
from ..models.transformer import ModelConfig, RotaryEmbedding


def shard_region(name: str, full_shape: tuple[int, ...], param: torch.Tensor,
                 tp_plan: dict[str, int] | None, tp_rank: int, tp: int) -> tuple[slice, ...]:
    """The slices of the full ``full_shape`` tensor that this rank's ``param`` holds:
    the tp split (``tp_plan[name]`` = split dim, even), then FSDP2's DTensor sharding
    of the tp-local tensor."""
    starts, sizes = [0] * len(full_shape), list(full_shape)
    if tp_plan and name in tp_plan and tp > 1:
        d = tp_plan[name]
        sizes[d] = full_shape[d] // tp
        starts[d] = tp_rank * sizes[d]
    if hasattr(param, "device_mesh"):  # DTensor (FSDP2) over the tp-local tensor
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local, offset = compute_local_shape_and_global_offset(tuple(sizes), param.device_mesh,
                                                              param.placements)
        starts = [s + o for s, o in zip(starts, offset)]
        sizes = list(local)
    return tuple(slice(s, s + n) for s, n in zip(starts, sizes))


def full_shape(name: str, param: torch.Tensor, tp_plan: dict[str, int] | None,
               tp: int) -> tuple[int, ...]:
    """The unsharded shape of ``param`` (DTensor: its global shape, times tp on the
    tp split dim)."""
    shape = list(param.shape)  # a DTensor's shape is the global (tp-local) one
    if tp_plan and name in tp_plan and tp > 1:
        shape[tp_plan[name]] *= tp
    return tuple(shape)


@torch.no_grad()
def init_shards(model: nn.Module, cfg: ModelConfig, seed: int, *,
                tp_plan: dict[str, int] | None = None, tp_rank: int = 0, tp: int = 1,
                seq_sharded: dict | None = None) -> int:
    """Fill every local shard of ``model`` (after ``to_empty``) and recompute the rotary
    tables. ``seq_sharded`` maps the names of sequence-sharded parameters (Linformer's
    E/F, :class:`seqpar.parallel.linformer.SeqShard`) to how they are split: those are
    drawn whole (they are small, ``(k, L)``) and this rank's columns kept. Returns the
    number of elements this rank initialised."""
    done = 0
    for name, param in model.named_parameters():
        if seq_sharded and name in seq_sharded:
            shard = seq_sharded[name]
            shape = (*param.shape[:-1], shard.length)
            whole = torch.empty(shape, dtype=param.dtype)
            fill_region(whole, name, shape, tuple(slice(0, n) for n in shape), cfg, seed)
            # (k, L) -> (k, L_local): the columns of this rank's tokens
            param.copy_(whole.index_select(-1, shard.positions("cpu")).to(param.device))
            done += param.numel()
            continue
        shape = full_shape(name, param, tp_plan, tp)
        region = shard_region(name, shape, param, tp_plan, tp_rank, tp)
        local = param.to_local() if hasattr(param, "to_local") else param
        want = tuple(r.stop - r.start for r in region)
        if tuple(local.shape) != want:
            raise RuntimeError(f"{name}: region {want} of {shape} but the shard is "
                               f"{tuple(local.shape)}")
        fill_region(local, name, shape, region, cfg, seed)
        done += local.numel()
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):  # non-persistent buffer: garbage after to_empty
            fresh = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
            module.inv_freq.copy_(fresh.inv_freq)
    return done


def materialize(model: nn.Module, cfg: ModelConfig, seed: int, device: torch.device, *,
                tp_plan: dict[str, int] | None = None, tp_rank: int = 0,
                tp: int = 1, seq_sharded: dict | None = None) -> float:
    """``to_empty(device)`` then :func:`init_shards`; returns the seconds it took."""
    t0 = time.perf_counter()
    ties: dict[int, list[tuple[nn.Module, str]]] = {}  # tied weights (the tiny LM head)
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                ties.setdefault(id(p), []).append((module, attr))
    model.to_empty(device=device)  # gives each module its own tensor: re-tie below
    for (first, attr), *others in (v for v in ties.values() if len(v) > 1):
        for module, other in others:
            setattr(module, other, getattr(first, attr))
    init_shards(model, cfg, seed, tp_plan=tp_plan, tp_rank=tp_rank, tp=tp,
                seq_sharded=seq_sharded)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


__all__ = ["full_shape", "init_shards", "materialize", "shard_region"]
