"""Which global tokens a rank owns: contiguous, zigzag or striped.

A layout is a rule mapping (rank, world size, global length) to the ordered
global positions a rank holds. ``shard``/``unshard`` and position ids all derive
from that one rule, so a new layout is one small class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .comm import all_gather_seq, hybrid_groups, is_hybrid_mesh, resolve_group, seq_rank_size


@dataclass(frozen=True)
class Layout:
    """Base class: subclasses define ``granule`` and ``global_positions``."""

    name = "layout"

    def granule(self, world: int) -> int:
        """The global length must be a multiple of this."""
        raise NotImplementedError

    def check_length(self, length: int, world: int) -> None:
        g = self.granule(world)
        if length % g != 0:
            raise ValueError(
                f"layout={self.name!r} with {world} ranks needs the global sequence length "
                f"to be a multiple of {g}, got L={length} (pad it with seqpar padding helpers)"
            )

    def segments(self, rank: int, world: int, length: int) -> list[tuple[int, int]]:
        """The runs of consecutive global positions ``rank`` owns: ``[(start, n), ...]``
        in local order. Attention plans are built from these."""
        raise NotImplementedError

    def global_positions(self, rank: int, world: int, length: int,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """Global token positions owned by ``rank``, in local order (int64)."""
        return torch.cat([torch.arange(s, s + n, device=device)
                          for s, n in self.segments(rank, world, length)])

    def rank_order(self, world: int, length: int, device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, inverse)`` for a sequence gathered in rank order (every rank's
        shard, rank 0 first): ``order[i]`` is the global position at index i, and
        ``x.index_select(dim, inverse)`` puts such a sequence into global order."""
        order = torch.cat([self.global_positions(r, world, length, device)
                           for r in range(world)])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(length, device=device)
        return order, inverse


@dataclass(frozen=True)
class Contiguous(Layout):
    """Rank r owns ``[r*L/P, (r+1)*L/P)``. Causal work is skewed towards the last rank."""

    name = "contiguous"

    def granule(self, world: int) -> int:
        return world

    def segments(self, rank, world, length):
        self.check_length(length, world)
        n = length // world
        return [(rank * n, n)]


@dataclass(frozen=True)
class Zigzag(Layout):
    """2P chunks; rank r owns chunks r and 2P-1-r, balancing causal work."""

    name = "zigzag"

    def granule(self, world: int) -> int:
        return 2 * world

    def segments(self, rank, world, length):
        self.check_length(length, world)
        c = length // (2 * world)
        return [(rank * c, c), ((2 * world - 1 - rank) * c, c)]


@dataclass(frozen=True)
class Striped(Layout):
    """Blocks of ``block`` tokens dealt round-robin: token t lives on rank (t // block) % P."""

    block: int = 1
    name = "striped"

    def granule(self, world: int) -> int:
        return world * self.block

    def segments(self, rank, world, length):
        self.check_length(length, world)
        return [(s, self.block) for s in range(rank * self.block, length, world * self.block)]

    def global_positions(self, rank, world, length, device="cpu"):
        self.check_length(length, world)
        starts = torch.arange(rank * self.block, length, world * self.block, device=device)
        # (n_blocks,) x (block,) -> (n_blocks * block,)
        return (starts[:, None] + torch.arange(self.block, device=device)[None, :]).reshape(-1)


_BY_NAME = {"contiguous": Contiguous, "zigzag": Zigzag, "striped": Striped}
LAYOUT_NAMES = tuple(_BY_NAME)


def get_layout(layout: str | Layout) -> Layout:
    """A Layout from its name (``"contiguous"``, ``"zigzag"``, ``"striped"``) or itself."""
    if isinstance(layout, Layout):
        return layout
    if layout not in _BY_NAME:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUT_NAMES}")
    return _BY_NAME[layout]()


def position_ids(length: int, *, group=None, layout: str | Layout = "contiguous",
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Global positions of the tokens this rank owns (for RoPE): ``(L/P,)`` int64."""
    rank, world = seq_rank_size(group)
    return get_layout(layout).global_positions(rank, world, length, device)


def shard(x: torch.Tensor, *, dim: int, group=None,
          layout: str | Layout = "contiguous") -> torch.Tensor:
    """This rank's part of the full tensor ``x`` along ``dim`` (no communication)."""
    lay = get_layout(layout)
    rank, world = seq_rank_size(group)
    length = x.shape[dim]
    lay.check_length(length, world)
    if isinstance(lay, Contiguous):
        return x.narrow(dim, rank * (length // world), length // world)
    return x.index_select(dim, lay.global_positions(rank, world, length, x.device))


def unshard(x: torch.Tensor, *, dim: int, group=None,
            layout: str | Layout = "contiguous") -> torch.Tensor:
    """The full tensor from every rank's shard along ``dim`` (all-gather; differentiable)."""
    lay = get_layout(layout)
    _, world = seq_rank_size(group)
    dim = dim % x.dim()
    if is_hybrid_mesh(group):
        # slice r*U+u lives on (u, r): gather over ulysses (minor) then ring (major)
        ug, rg = hybrid_groups(group)
        gathered = all_gather_seq(all_gather_seq(x, dim, ug), dim, rg)
    else:
        gathered = all_gather_seq(x, dim, resolve_group(group))  # (..., L @ dim, ...)
    if isinstance(lay, Contiguous):
        return gathered
    length = gathered.shape[dim]
    _, inverse = lay.rank_order(world, length, x.device)
    return gathered.index_select(dim, inverse)
