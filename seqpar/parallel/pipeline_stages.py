"""Pipeline stage modules cut from the native :class:`~seqpar.models.Transformer`.

A stage holds a contiguous slice of the layer list, the token embedding on the
first stage and the final norm + head on the last; every stage holds the RoPE
table module (no parameters), since each needs the cos/sin of its tokens. The
stage module is as free of ``torch.distributed`` as the model it is cut from:
pipeline communication, sequence/tensor parallelism and FSDP2 are applied from
outside (``pipeline.py``, ``parallelize.py``).

Parameter names stay those of the whole model (``layers.<global index>...``,
``tok_embeddings.weight``, ``norm.weight``, ``output.weight``), so a DCP checkpoint
written under any ``pp`` loads under any other. With tied embeddings the last
stage uses ``tok_embeddings`` as the head (named as in the model;
each process holds its own copy, and the pipeline sums the first and last stage's
gradients of it, as Megatron's embedding group does).

Per-batch data travels as forward arguments (microbatched along dim 0 by the
schedule, so both are batch-shaped): ``position_ids (B, L)`` (every row the
same global positions) and ``documents (B, K)``: each sequence's global document
boundaries (``cu_seqlens``) padded with ``-1``; with a chunked head + loss
(:meth:`TransformerStage.set_head_loss`) also ``labels (B, L)``, so that the head
weight is used inside the last stage's forward (the full weight under FSDP2, its
gradient reduced by FSDP2's own hooks, as in the unpipelined model's ``head_loss``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.transformer import AttentionFn, Transformer

#: ``head_loss(hidden (B, L, dim), head_weight (V, dim), labels (B, L))`` -> a tensor
#: the schedule's loss function reads (e.g. a chunked head + loss that never builds logits)
StageHeadLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: padding of the ``documents`` rows (a boundary is never negative)
NO_BOUNDARY = -1


class LayerSlice(nn.Module):
    """Some blocks of the layer list, registered under their global indices.

    Iterating yields the blocks in order (as ``Transformer.layers`` does), so code
    written for the whole model (TP, activation checkpointing, FSDP units, tiled
    MLP) walks a stage's layers unchanged.
    """

    def __init__(self, blocks: dict[int, nn.Module]):
        super().__init__()
        for index, block in blocks.items():
            self.add_module(str(index), block)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> nn.Module:
        return list(self._modules.values())[i]


class TransformerStage(nn.Module):
    """Stage ``stage`` of ``n_stages``: layers ``layer_ids`` of ``model`` (shared, not copied).

    Forward: tokens ``(B, L)`` (first stage) or hidden ``(B, L, dim)`` -> hidden
    ``(B, L, dim)``, or logits ``(B, L, V)`` on the last stage (or, with
    :meth:`set_head_loss` and ``labels``, what the head loss returns).
    """

    def __init__(self, model: Transformer, layer_ids: range, *, stage: int, n_stages: int):
        super().__init__()
        self.cfg = model.cfg
        self.stage, self.n_stages = stage, n_stages
        self.is_first, self.is_last = stage == 0, stage == n_stages - 1
        if self.is_first or (self.is_last and self.cfg.tie_embeddings):
            self.tok_embeddings = model.tok_embeddings
        self.rope = copy.deepcopy(model.rope)  # one per stage: TP hooks it per stage
        self.layers = LayerSlice({i: model.layers[i] for i in layer_ids})
        if self.is_last:
            self.norm = model.norm
            if not self.cfg.tie_embeddings:
                self.output = model.output
        self.head_loss: StageHeadLoss | None = None

    def set_attention(self, attn_fn: AttentionFn) -> None:
        """Inject the attention callable used by every layer of this stage."""
        for block in self.layers:
            block.attention.attn_fn = attn_fn

    def set_head_loss(self, head_loss: StageHeadLoss | None) -> None:
        """Inject the function that replaces the head on the last stage when ``labels``
        are given (it holds no process group: the loss is this microbatch's local one)."""
        self.head_loss = head_loss

    def head_weight(self) -> torch.Tensor:
        return self.tok_embeddings.weight if self.cfg.tie_embeddings else self.output.weight

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor,
                documents: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        pos = position_ids[0]  # (B, L) -> (L,): every row holds the same positions
        docs = None if documents is None else [row[row != NO_BOUNDARY] for row in documents]
        h = self.tok_embeddings(x) if self.is_first else x  # (B, L) ids -> (B, L, dim)
        rope = self.rope(pos)  # 2 x (L, head_dim)
        for block in self.layers:
            h = block(h, rope, documents=docs)
        if not self.is_last:
            return h  # (B, L, dim)
        if self.head_loss is not None and labels is not None:
            return self.head_loss(self.norm(h), self.head_weight(), labels)  # hidden (B, L, dim)
        return F.linear(self.norm(h), self.head_weight())  # (B, L, dim) -> (B, L, V)


def stage_layers(n_layers: int, n_stages: int, stage: int) -> range:
    """The global layer indices of ``stage``: an equal contiguous slice."""
    if n_layers % n_stages:
        raise ValueError(f"n_layers={n_layers} cannot be split evenly into {n_stages} stages")
    per = n_layers // n_stages
    return range(stage * per, (stage + 1) * per)


def stage_ids(pp_rank: int, pp: int, virtual_stages: int) -> list[int]:
    """The stages a pp rank runs: ``pp_rank, pp_rank + pp, ...`` (looped, as
    ``ScheduleInterleaved1F1B`` expects)."""
    return [pp_rank + k * pp for k in range(virtual_stages)]


def build_stages(model: Transformer, pp_rank: int, pp: int,
                 virtual_stages: int = 1) -> list[TransformerStage]:
    """This pp rank's stage modules, cut from ``model`` (built whole, identically on every
    rank, so the weights equal the one-process model's)."""
    n_stages = pp * virtual_stages
    return [TransformerStage(model, stage_layers(model.cfg.n_layers, n_stages, s), stage=s,
                             n_stages=n_stages) for s in stage_ids(pp_rank, pp, virtual_stages)]


def pad_documents(cu_seqlens: list[torch.Tensor] | None) -> torch.Tensor | None:
    """One ``cu_seqlens`` per sequence -> ``(B, K)`` rows padded with ``NO_BOUNDARY``."""
    if cu_seqlens is None:
        return None
    width = max(int(cu.numel()) for cu in cu_seqlens)
    out = torch.full((len(cu_seqlens), width), NO_BOUNDARY, dtype=torch.long)
    for i, cu in enumerate(cu_seqlens):
        out[i, :cu.numel()] = cu.long()
    return out
