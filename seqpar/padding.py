"""Sequences whose length the layout cannot split: pad, and make padding inert.

Convention: pad at the end to the next length the layout accepts; padded label
positions get ``ignore_index`` (-100) so they add nothing to the loss; for
attention the padding becomes its own document in ``cu_seqlens`` so no real
token attends to it (causal attention alone would already guarantee that for
end padding; bidirectional attention needs the document). Then loss and
gradients equal the unpadded run.
"""

from __future__ import annotations

import torch

from .comm import seq_rank_size
from .layout import Layout, get_layout

IGNORE_INDEX = -100


def padded_length(length: int, *, world: int, layout: str | Layout = "contiguous") -> int:
    """The smallest length >= ``length`` that ``layout`` splits over ``world`` ranks."""
    g = get_layout(layout).granule(world)
    return -(-length // g) * g


def pad_for_layout(x: torch.Tensor, *, dim: int, group=None, world: int | None = None,
                   layout: str | Layout = "contiguous", value: float | int = 0
                   ) -> tuple[torch.Tensor, int]:
    """Pad ``x`` at the end of ``dim`` to a length the layout accepts.

    Returns ``(padded, n_pad)``. Use ``value=IGNORE_INDEX`` for labels.
    """
    world = world if world is not None else seq_rank_size(group)[1]
    length = x.shape[dim]
    n_pad = padded_length(length, world=world, layout=layout) - length
    if n_pad == 0:
        return x, 0
    shape = list(x.shape)
    shape[dim] = n_pad
    return torch.cat([x, x.new_full(shape, value)], dim=dim), n_pad


def pad_cu_seqlens(cu_seqlens: torch.Tensor | None, length: int, padded: int) -> torch.Tensor:
    """Document boundaries for the padded sequence: padding is its own document."""
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, length], dtype=torch.int32)
    if padded == length:
        return cu_seqlens
    return torch.cat([cu_seqlens, cu_seqlens.new_tensor([padded])])
