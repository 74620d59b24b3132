"""A global HF-style batch -> this rank's shard plus the model's forward kwargs.

transformers shifts labels inside its loss; a sharded sequence cannot (the next
token of a shard's last position lives on another rank), so labels are shifted
on the global sequence first: ``shifted[t] = labels[t + 1]``, the last is -100.
Packed documents follow transformers' convention: position ids restart at 0 per
document (a position that is not its predecessor + 1 starts a new document,
exactly the rule of ``transformers.masking_utils.find_packed_sequence_indices``);
they become *global* ``cu_seqlens`` for seqpar attention, and the position ids
themselves (sharded) feed RoPE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..comm import group_rank_size, resolve_group, seq_rank_size
from ..layout import Layout, get_layout, shard
from ..padding import IGNORE_INDEX
from .attention import CU_SEQLENS_KWARG


@dataclass
class ShardedBatch:
    """This rank's ``(B, L/P)`` shard of a global ``(B, L)`` batch, in the layout's order.

    ``labels`` are already shifted (feed them to :func:`seqpar.hf.loss`, never to the
    model); ``cu_seqlens`` holds one tensor of global document boundaries per row,
    or None when no row is packed.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: list[torch.Tensor] | None
    global_length: int

    def to(self, device: torch.device | str) -> ShardedBatch:
        """Tensors on ``device``; ``cu_seqlens`` stay on the CPU (read on the host)."""
        return ShardedBatch(*(t.to(device, non_blocking=True)
                              for t in (self.input_ids, self.labels, self.position_ids)),
                            cu_seqlens=self.cu_seqlens, global_length=self.global_length)

    def model_kwargs(self) -> dict:
        """``model(**batch.model_kwargs())``: ids, positions, documents, no KV cache."""
        kw = dict(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=False)
        if self.cu_seqlens is not None:
            kw[CU_SEQLENS_KWARG] = self.cu_seqlens
        return kw


def shift_labels(labels: torch.Tensor, position_ids: torch.Tensor | None = None, *,
                 mask_document_ends: bool = True) -> torch.Tensor:
    """``(B, L)`` labels -> next-token labels ``(B, L)``, -100 at the end.

    With ``position_ids`` and ``mask_document_ends``, a document's last token does not
    predict the next document's first (what ``DataCollatorWithFlattening`` does by
    putting -100 at each document start).
    """
    # (B, L) -> (B, L-1) ++ (B, 1) of -100
    shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], 1)
    if position_ids is not None and mask_document_ends:
        starts = _document_starts(position_ids)  # (B, L) bool
        shifted[:, :-1] = shifted[:, :-1].masked_fill(starts[:, 1:], IGNORE_INDEX)
    return shifted


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> list[torch.Tensor] | None:
    """``(B, L)`` packed position ids -> one int32 tensor ``[0, ..., L]`` of document
    boundaries per row (CPU), or None when no row holds more than one document."""
    starts = _document_starts(position_ids).cpu()
    if not starts[:, 1:].any():
        return None
    length = position_ids.shape[1]
    out = []
    for row in starts:
        idx = torch.nonzero(row[1:]).flatten() + 1
        out.append(torch.cat([torch.zeros(1, dtype=torch.int64), idx,
                              torch.tensor([length])]).to(torch.int32))
    return out


def _document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` -> bool ``(B, L)``: True where a document starts (position 0 always)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def shard_batch(input_ids: torch.Tensor, labels: torch.Tensor | None = None, *, group=None,
                layout: str | Layout = "zigzag", position_ids: torch.Tensor | None = None,
                pad: bool = False, pad_token_id: int = 0, mask_document_ends: bool = True,
                tp_group=None) -> ShardedBatch:
    """This rank's part of a global batch, ready for a model under :func:`seqpar.hf.apply`.

    ``input_ids (B, L)``; ``labels (B, L)`` unshifted, HF-style (default: the inputs);
    ``position_ids (B, L)`` or ``(L,)``: packed documents restart at 0 (default:
    ``0..L-1``). ``group``/``layout`` must be those given to ``apply``. ``L`` must be
    a multiple of the layout's granule; ``pad=True`` pads at the end instead
    (padding is its own document with labels -100, so loss and gradients are
    unchanged). Every check is local: errors come before any collective.
    ``tp_group`` (with :func:`seqpar.hf.apply_tensor_parallel`): keep the
    ``tp_rank``-th contiguous chunk of the sp shard, ``(B, L/(P*tp))``.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
    b, length = input_ids.shape
    labels = input_ids if labels is None else labels
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {(b, length)}")
    packed = position_ids is not None
    if position_ids is None:
        position_ids = torch.arange(length, device=input_ids.device)
    position_ids = _rows(position_ids, b, length)
    shifted = shift_labels(labels, position_ids if packed else None,
                           mask_document_ends=mask_document_ends)
    lay = get_layout(layout)
    world = seq_rank_size(group)[1]
    tp_rank, tp = group_rank_size(resolve_group(tp_group)) if tp_group is not None else (0, 1)
    multiple = math.lcm(lay.granule(world), world * tp)
    target = -(-length // multiple) * multiple
    if target != length:
        if not pad:
            where = f" and tp={tp}" if tp > 1 else ""
            raise ValueError(
                f"layout={lay.name!r} over {world} ranks{where} splits sequence lengths that "
                f"are multiples of {multiple}, got L={length} (next: {target}); pass "
                "pad=True or pack to such a length")
        n = target - length
        # (B, L) -> (B, L + n): pad tokens, ignored labels, positions 0.. (a new document)
        input_ids = torch.cat([input_ids, input_ids.new_full((b, n), pad_token_id)], 1)
        shifted = torch.cat([shifted, shifted.new_full((b, n), IGNORE_INDEX)], 1)
        tail = torch.arange(n, device=position_ids.device).expand(b, n)
        position_ids = torch.cat([position_ids, tail.to(position_ids.dtype)], 1)
        packed = True
    cu = cu_seqlens_from_position_ids(position_ids) if packed else None
    # (B, L) -> (B, L/P) in the layout's local order
    parts = [shard(t, dim=1, group=group, layout=lay) for t in (input_ids, shifted, position_ids)]
    # (B, L/P) -> (B, L/(P*tp)): contiguous chunk tp_rank (the TP all-gather's order)
    parts = [t.chunk(tp, dim=1)[tp_rank].contiguous() for t in parts]
    return ShardedBatch(*parts, cu_seqlens=cu, global_length=target)


def _rows(position_ids: torch.Tensor, b: int, length: int) -> torch.Tensor:
    """``(L,)`` / ``(1, L)`` / ``(B, L)`` -> ``(B, L)`` int64."""
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    if position_ids.dim() != 2 or position_ids.shape[1] != length \
            or position_ids.shape[0] not in (1, b):
        raise ValueError(f"position_ids must be (L,), (1, L) or (B, L) = ({b}, {length}), got "
                         f"{tuple(position_ids.shape)}")
    return position_ids.expand(b, length).long()
