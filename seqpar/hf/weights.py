"""HF safetensors in and out of a sharded model, without a full copy on any rank.

Loading: build the model on the meta device, apply seqpar (``apply``,
``apply_tensor_parallel``, ``fully_shard_model``), ``to_empty`` it on the target
device, then :func:`load_weights` reads for every parameter only the region this
rank holds: the tp slice (the dim ``apply_tensor_parallel`` reported) and,
inside it, the FSDP shard (the DTensor's local shape and offset), through
``safetensors``' lazy slices. Peak extra memory is one local shard, and the
bytes read per rank are about the model size / world.

Saving (:func:`save_weights`, collective) gathers one parameter at a time over
FSDP and tp and writes a normal HF folder from rank 0 (``config.json`` +
``model.safetensors``), which ``from_pretrained`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..comm.groups import group_rank_size
from .families import check_supported


def weight_files(folder: str | Path) -> dict[str, Path]:
    """``{tensor name: safetensors file}`` of an HF folder (sharded with an index, or
    one ``model.safetensors``). ``ValueError`` naming what is missing."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / f for name, f in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise ValueError(f"{folder} has neither model.safetensors nor "
                         "model.safetensors.index.json")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def _region(name: str, shape: tuple[int, ...], param: torch.Tensor,
            tp_sharded: dict[str, int], tp_group) -> tuple[slice, ...]:
    """The index region of the dense tensor ``name`` that this rank's ``param`` holds."""
    starts = [0] * len(shape)
    sizes = list(shape)
    if name in tp_sharded:
        d = tp_sharded[name]
        rank, tp = group_rank_size(tp_group)
        sizes[d] = shape[d] // tp
        starts[d] = rank * sizes[d]
    if hasattr(param, "device_mesh"):  # FSDP: a DTensor over the tp-local tensor
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local, offset = compute_local_shape_and_global_offset(tuple(sizes), param.device_mesh,
                                                              param.placements)
        starts = [s + o for s, o in zip(starts, offset)]
        sizes = list(local)
    return tuple(slice(s, s + n) for s, n in zip(starts, sizes))


@torch.no_grad()
def load_weights(model: nn.Module, folder: str | Path, *,
                 tp_sharded: dict[str, int] | None = None, tp_group=None) -> int:
    """Fill ``model``'s (possibly FSDP/tp-sharded, freshly ``to_empty``) parameters from
    the safetensors in ``folder``, and recompute the rotary tables. Returns the bytes
    read. Every check is local (missing tensors, shape mismatches: ``ValueError``)."""
    from safetensors import safe_open

    check_supported(model.config)
    tp_sharded = tp_sharded or {}
    files = weight_files(folder)
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in files]
    if missing:
        raise ValueError(f"{folder}: no tensor for {len(missing)} parameters, e.g. {missing[:3]}")
    read = 0
    by_file: dict[Path, list[str]] = {}
    for name in params:
        by_file.setdefault(files[name], []).append(name)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for name in names:
                param = params[name]
                sl = f.get_slice(name)
                region = _region(name, tuple(sl.get_shape()), param, tp_sharded, tp_group)
                local = param.to_local() if hasattr(param, "to_local") else param
                want = tuple(r.stop - r.start for r in region)
                if tuple(local.shape) != want:
                    raise ValueError(f"{name}: the checkpoint's {tuple(sl.get_shape())} gives "
                                     f"this rank {want}, the model holds {tuple(local.shape)}")
                if local.numel():
                    data = sl[region]
                    read += data.numel() * data.element_size()
                    local.copy_(data)
    _reset_rotary(model)
    return read


def _reset_rotary(model: nn.Module) -> None:
    """Rotary ``inv_freq`` is a non-persistent buffer: after ``to_empty`` it holds garbage,
    so recompute it from the config (on CPU, then copied)."""
    base = getattr(model, "model", model)
    rot = base.rotary_emb
    with torch.device("cpu"):
        fresh = type(rot)(rot.config)
    for name, buf in fresh.named_buffers():
        getattr(rot, name).copy_(buf)


@torch.no_grad()
def save_weights(model: nn.Module, folder: str | Path, *,
                 tp_sharded: dict[str, int] | None = None, tp_group=None) -> None:
    """Write ``model`` as a normal HF folder from rank 0 (collective: every rank calls it).

    Each parameter is gathered alone (FSDP ``full_tensor``, then all-gather over tp
    along its split dim) and kept on rank 0's CPU only.
    """
    from safetensors.torch import save_file

    tp_sharded = tp_sharded or {}
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        t = param.full_tensor() if hasattr(param, "full_tensor") else param.detach()
        if name in tp_sharded and group_rank_size(tp_group)[1] > 1:
            parts = [torch.empty_like(t) for _ in range(group_rank_size(tp_group)[1])]
            dist.all_gather(parts, t.contiguous(), group=tp_group)
            t = torch.cat(parts, dim=tp_sharded[name])  # tp slices -> the dense tensor
        if rank == 0:
            state[name] = t.cpu().contiguous()
    if rank == 0:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
