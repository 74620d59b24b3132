"""From a global batch to this rank's shard: dp slice, sp layout shard, tp chunk.

Every rank builds the same global batch (cheap: synthetic data or windows of a
token stream) and keeps its part, so no data moves between ranks and the
sharding rule lives in one place (``seqpar.shard`` / ``seqpar.position_ids``).
Labels arrive already shifted, so sharding them with the inputs loses no label
at a shard border.

Under Megatron sequence parallelism a rank of the tp group holds the
contiguous ``tp_rank``-th chunk of its sp shard (in local order); the TP
all-gather reassembles the sp shard in exactly that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import position_ids, shard


@dataclass
class LocalBatch:
    """This rank's tokens/labels ``(B/dp, L/(sp*tp))`` and their global positions.

    ``cu_seqlens``: for packed data, one tensor of *global* document boundaries
    per local sequence (attention derives which of them touch this rank's tokens).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: list[torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> LocalBatch:
        return LocalBatch(self.tokens.to(device, non_blocking=True),
                          self.labels.to(device, non_blocking=True),
                          self.position_ids.to(device, non_blocking=True),
                          self.cu_seqlens)


def shard_batch(tokens: torch.Tensor, labels: torch.Tensor, *, sp_group=None,
                layout: str = "contiguous", dp_rank: int = 0, dp: int = 1, tp_rank: int = 0,
                tp: int = 1, cu_seqlens: list[torch.Tensor] | None = None) -> LocalBatch:
    """This rank's part of a global ``(B, L)`` batch.

    ``sp_group`` may be ``None`` (no sequence parallelism), a ProcessGroup, a
    1-D DeviceMesh or a hybrid 2-D mesh; the sp degree and this rank's place in
    it come from it. ``cu_seqlens`` (one per global sequence) follows the dp slice.
    """
    b, length = tokens.shape
    if b % dp:
        raise ValueError(f"global batch {b} is not divisible by dp={dp}")
    per = b // dp
    # (B, L) -> (B/dp, L): this data-parallel replica's sequences
    rows = slice(dp_rank * per, (dp_rank + 1) * per)
    tokens, labels = tokens[rows], labels[rows]
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens[rows]
    # (B/dp, L) -> (B/dp, L/sp) in the layout's local order
    tokens = shard(tokens, dim=1, group=sp_group, layout=layout)
    labels = shard(labels, dim=1, group=sp_group, layout=layout)
    pos = position_ids(length, group=sp_group, layout=layout)  # (L/sp,)
    if tp > 1:
        if tokens.shape[1] % tp:
            raise ValueError(f"local length {tokens.shape[1]} is not divisible by tp={tp}")
        # (B/dp, L/sp) -> (B/dp, L/(sp*tp)): contiguous chunk tp_rank of the sp shard
        tokens, labels = tokens.chunk(tp, dim=1)[tp_rank], labels.chunk(tp, dim=1)[tp_rank]
        pos = pos.chunk(tp)[tp_rank]
    return LocalBatch(tokens.contiguous(), labels.contiguous(), pos.contiguous(), cu_seqlens)
