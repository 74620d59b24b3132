"""Linformer's E/F as sequence-sharded parameters: each rank owns its tokens' columns.

``apply_linformer(model, group, layout)`` replaces every layer's
:class:`~seqpar.models.linformer.LinformerProjection` ``(k, L)`` by a
:class:`ShardedLinformerProjection` holding only the columns of the global
positions this rank owns under ``layout`` (contiguous, zigzag, striped, any
:class:`~seqpar.layout.Layout`), and installs
:class:`~seqpar.attention.linformer.LinformerSPAttention`, which sums the ranks'
partial projections. A rank's E/F gradient is then exact for its columns
without any sp reduction (the all-reduce's backward already summed the ranks'
gradients of ``E K``); replicas along dp sum theirs (``gradients.py``).

The shards are plain tensors that FSDP2 leaves alone (``ignored_params``): they
are already split along the sequence. Checkpoints hold the full ``(k, L)``
tensors (:func:`gather_full` on save, :func:`slice_local` on load), so a run
resumes under any sp degree or layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..attention.linformer import LinformerSPAttention
from ..comm import group_rank_size, resolve_group
from ..layout import Layout, get_layout
from ..models.linformer import LinformerProjection


class ShardedLinformerProjection(LinformerProjection):
    """E/F columns ``positions`` (this rank's global token positions, local order)."""

    def __init__(self, full: LinformerProjection, positions: torch.Tensor):
        nn.Module.__init__(self)
        with torch.no_grad():
            # (k, L) -> (k, L_local): the columns of the tokens this rank holds
            self.e = nn.Parameter(full.e.detach().index_select(1, positions).clone())
            self.f = nn.Parameter(full.f.detach().index_select(1, positions).clone())
        self.full_length = full.e.shape[1]

    def columns(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length != self.e.shape[1]:
            raise ValueError(f"Linformer under SP: this rank holds E/F columns for "
                             f"{self.e.shape[1]} tokens of max_seq_len={self.full_length}, "
                             f"got {length} local tokens (train at seq_len = max_seq_len)")
        return self.e, self.f


@dataclass(frozen=True)
class SeqShard:
    """How one parameter is split along its last dim (the sequence) over ``group``."""

    group: dist.ProcessGroup | None
    layout: Layout
    length: int  # full L

    def positions(self, device: torch.device | str = "cpu") -> torch.Tensor:
        rank, world = group_rank_size(self.group)
        return self.layout.global_positions(rank, world, self.length, device)


@torch.no_grad()
def gather_full(shard: SeqShard, t: torch.Tensor) -> torch.Tensor:
    """``(k, L_local)`` on every rank -> the full ``(k, L)`` in global order (collective)."""
    _, world = group_rank_size(shard.group)
    if world == 1:
        return t.detach().clone()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous(), group=shard.group)
    _, inverse = shard.layout.rank_order(world, shard.length, t.device)
    # world x (k, L_local) -> (k, L) in rank order -> global order
    return torch.cat(parts, dim=1).index_select(1, inverse)


@torch.no_grad()
def slice_local(shard: SeqShard, full: torch.Tensor) -> torch.Tensor:
    """The full ``(k, L)`` -> this rank's ``(k, L_local)`` columns."""
    if full.shape[-1] != shard.length:
        raise ValueError(f"Linformer checkpoint: E/F have {full.shape[-1]} columns, the "
                         f"model max_seq_len={shard.length}")
    return full.index_select(1, shard.positions(full.device))


def linformer_dims_problems(dims) -> list[str]:
    """What a ParallelDims cannot do with Linformer (checked before any collective)."""
    problems = []
    if dims.tp > 1:
        problems.append(f"Linformer attention needs tp=1 (got tp={dims.tp}): E/F are shared "
                        f"by the heads that TP splits")
    if dims.strategy == "hybrid":
        problems.append("Linformer attention does not take strategy='hybrid' (its 2-D mesh "
                        "orders sequence slices differently); any other strategy name works: "
                        "Linformer replaces the strategy's attention")
    return problems


def apply_linformer(model: nn.Module, group=None, layout: str | Layout = "contiguous"
                    ) -> dict[str, SeqShard]:
    """Shard every layer's E/F over the sp ``group`` by ``layout`` and install the
    Linformer attention. Returns ``{parameter name: SeqShard}`` of the sharded ones."""
    pg = resolve_group(group) if group is not None else None
    lay = get_layout(layout)
    rank, world = group_rank_size(pg) if pg is not None else (0, 1)
    shards: dict[str, SeqShard] = {}
    for i, block in enumerate(model.layers):
        full = block.attention.linformer
        if full is None:
            raise ValueError("apply_linformer: the model has softmax attention "
                             "(build it with attention='linformer')")
        length = full.e.shape[1]
        lay.check_length(length, world)
        if world > 1:
            positions = lay.global_positions(rank, world, length, full.e.device)
            block.attention.linformer = ShardedLinformerProjection(full, positions)
            for p in ("e", "f"):
                shards[f"layers.{i}.attention.linformer.{p}"] = SeqShard(pg, lay, length)
    model.set_attention(LinformerSPAttention(pg))
    return shards
