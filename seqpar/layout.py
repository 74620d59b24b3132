"""Which global tokens a rank owns: contiguous, zigzag or striped.

A layout is a rule mapping (rank, world size, global length) to the ordered
global positions a rank holds, as :data:`Runs`. ``shard``/``unshard``, position
ids, attention plans and reorders all derive from that one rule, so a new
layout is one small class (subclass :class:`Layout`, define ``granule`` and
``segments``; any name and fields work everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .comm import (
    all_gather_seq,
    hybrid_groups,
    hybrid_slices,
    is_hybrid_mesh,
    resolve_group,
    seq_rank_size,
)

#: Runs of consecutive global positions, ``[(global_start, length), ...]`` in local
#: order: what a rank owns (``Layout.segments``), what a reorder copies, what a plan
#: is built from. The one type for it; :func:`merge_runs` is its one merge.
Runs = list[tuple[int, int]]

#: A score block in closed form, ``(q0, q1, k0, k1, causal)`` in local indices (see
#: ``seqpar.attention.plan.ScoreBlock``; plain tuples so that layouts need no planner).
BlockTuple = tuple[int, int, int, int, bool]


def merge_runs(runs: Runs) -> Runs:
    """Join runs where one continues the previous: ``[(0, 2), (2, 3)] -> [(0, 5)]``."""
    out: Runs = []
    for start, n in runs:
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + n)
        elif n:
            out.append((start, n))
    return out


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

    def segments(self, rank: int, world: int, length: int) -> Runs:
        """The runs of consecutive global positions ``rank`` owns: ``[(start, n), ...]``
        in local order. Attention plans are built from these."""
        raise NotImplementedError

    def closed_form(self, rank: int, src: int, world: int, length: int
                    ) -> list[BlockTuple] | None:
        """Causal blocks (no documents) of ``rank``'s queries against ``src``'s keys, when
        the layout knows them in closed form; ``None``: build them from ``segments``.

        The one place that decides a layout's special case: the planner asks here for
        every strategy (ring, allgather, hybrid, work_per_rank). A closed form must
        cost O(1) per block, so planning never grows faster than the blocks it emits.
        """
        return None

    def global_positions(self, rank: int, world: int, length: int,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """Global token positions owned by ``rank``, in local order (int64)."""
        return torch.cat([torch.arange(s, s + n, device=device)
                          for s, n in self.segments(rank, world, length)])

    def rank_order(self, world: int, length: int, device: torch.device | str = "cpu",
                   slices: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, inverse)`` for a sequence gathered in rank order (every rank's
        shard, rank 0 first; or the shards of ``slices``, in that order):
        ``order[i]`` is the global position at index i, and
        ``x.index_select(dim, inverse)`` puts such a sequence into global order."""
        slices = tuple(range(world)) if slices is None else slices
        order = torch.cat([self.global_positions(r, world, length, device) for r in slices])
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

    def closed_form(self, rank, src, world, length):
        """Token-striped (block 1): query i (global ``i·P + rank``) sees key j (global
        ``j·P + src``) iff ``j <= i`` when ``src <= rank``, else ``j < i``: one top-left
        causal square, or the same square shifted by one (rows 1.. against keys ..-1),
        instead of one block per token pair."""
        if self.block != 1:
            return None
        self.check_length(length, world)
        n = length // world
        if src <= rank:
            return [(0, n, 0, n, True)]
        return [(1, n, 0, n - 1, True)] if n > 1 else []

    def global_positions(self, rank, world, length, device="cpu"):
        self.check_length(length, world)
        starts = torch.arange(rank * self.block, length, world * self.block, device=device)
        # (n_blocks,) x (block,) -> (n_blocks * block,)
        return (starts[:, None] + torch.arange(self.block, device=device)[None, :]).reshape(-1)


def _documents(cu_seqlens: tuple[int, ...], length: int, world: int, granule: int,
               name: str) -> list[tuple[int, int]]:
    """``[(start, end)]`` of the non-empty documents, checked against ``length``."""
    if not cu_seqlens or cu_seqlens[0] != 0 or cu_seqlens[-1] != length:
        raise ValueError(f"layout={name!r}: cu_seqlens must run from 0 to L={length}, got "
                         f"{list(cu_seqlens)[:8]}")
    docs = [(s, e) for s, e in zip(cu_seqlens, cu_seqlens[1:]) if e > s]
    bad = [(s, e) for s, e in docs if (e - s) % granule]
    if bad:
        raise ValueError(f"layout={name!r} with {world} ranks needs every document length to "
                         f"be a multiple of {granule}, got lengths "
                         f"{[e - s for s, e in bad][:8]} (pad each document)")
    return docs


@dataclass(frozen=True)
class DocZigzag(Layout):
    """Per-document zigzag (ring-flash-attention's varlen split, PyTorch's per-document
    head-tail balancer): every packed document is cut into 2P chunks and rank r owns
    chunks r and 2P-1-r *of each document*, so causal work is balanced per document,
    however ragged the documents. ``cu_seqlens``: the batch's boundaries (a tuple);
    every document length must be a multiple of 2P. Pass the same ``cu_seqlens`` to
    ``seqpar.attention``."""

    cu_seqlens: tuple[int, ...] = ()
    name = "doc_zigzag"

    def granule(self, world: int) -> int:
        return 2 * world

    def check_length(self, length: int, world: int) -> None:
        super().check_length(length, world)
        _documents(self.cu_seqlens, length, world, 2 * world, self.name)

    def segments(self, rank, world, length):
        self.check_length(length, world)
        runs = []
        for s, e in _documents(self.cu_seqlens, length, world, 2 * world, self.name):
            c = (e - s) // (2 * world)
            runs += [(s + rank * c, c), (s + (2 * world - 1 - rank) * c, c)]
        return runs


@dataclass(frozen=True)
class DocStriped(Layout):
    """Per-document striped: every packed document is dealt round-robin in blocks of
    ``block`` tokens starting at rank 0, so each rank holds ~1/P of every document
    (balanced causal work per document). Every document length must be a multiple
    of P·block. Pass the same ``cu_seqlens`` to ``seqpar.attention``."""

    cu_seqlens: tuple[int, ...] = ()
    block: int = 1
    name = "doc_striped"

    def granule(self, world: int) -> int:
        return world * self.block

    def check_length(self, length: int, world: int) -> None:
        super().check_length(length, world)
        _documents(self.cu_seqlens, length, world, world * self.block, self.name)

    def segments(self, rank, world, length):
        self.check_length(length, world)
        b = self.block
        return [(t, b)
                for s, e in _documents(self.cu_seqlens, length, world, world * b, self.name)
                for t in range(s + rank * b, e, world * b)]


_BY_NAME = {"contiguous": Contiguous, "zigzag": Zigzag, "striped": Striped}
LAYOUT_NAMES = tuple(_BY_NAME)


def get_layout(layout: str | Layout) -> Layout:
    """A Layout from its name (``"contiguous"``, ``"zigzag"``, ``"striped"``), an import
    path of a ``Layout`` subclass (``"package.module:ClassName"``, built with no
    arguments), or itself."""
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, str) and ":" in layout:
        import importlib

        module, _, attr = layout.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"layout {layout!r}: cannot import it ({exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, Layout)):
            raise ValueError(f"layout {layout!r} is not a seqpar.Layout subclass")
        return cls()
    if layout not in _BY_NAME:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUT_NAMES} or "
                         f"'module:LayoutClass'")
    return _BY_NAME[layout]()


def position_ids(length: int, *, group=None, layout: str | Layout = "contiguous",
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Global positions of the tokens this rank owns (for RoPE): ``(L/P,)`` int64."""
    rank, world = seq_rank_size(group)
    return get_layout(layout).global_positions(rank, world, length, device)


def shard(x: torch.Tensor, *, dim: int, group=None,
          layout: str | Layout = "contiguous") -> torch.Tensor:
    """This rank's part of the full tensor ``x`` along ``dim`` (no communication),
    as a new contiguous tensor for every layout (a view of ``x`` would break
    ``.view(-1)`` on it, e.g. in a Hugging Face loss).

    ``group``: the default group, a 1-D group/mesh, or a hybrid mesh (whose slices
    follow the members' global rank order, so this equals the default-group shard
    when the mesh spans the world, see ``seqpar.comm.hybrid_slices``).
    """
    lay = get_layout(layout)
    rank, world = seq_rank_size(group)
    length = x.shape[dim]
    lay.check_length(length, world)
    runs = merge_runs(lay.segments(rank, world, length))
    if len(runs) == 1:
        return x.narrow(dim, runs[0][0], runs[0][1]).contiguous()
    return x.index_select(dim, lay.global_positions(rank, world, length, x.device))


def unshard(x: torch.Tensor, *, dim: int, group=None,
            layout: str | Layout = "contiguous") -> torch.Tensor:
    """The full tensor from every rank's shard along ``dim`` (all-gather; differentiable).

    Where the loss goes: the backward of ``unshard`` is a reduce-scatter, so each
    shard's gradient is the *sum over ranks* of the gradients their copies of the
    full tensor received. If every rank computes the same loss on the full tensor
    and calls backward, the shards get P times the gradient: compute the loss on
    the local shard instead (the global loss is the sum over ranks), or divide by P.
    """
    lay = get_layout(layout)
    _, world = seq_rank_size(group)
    dim = dim % x.dim()
    slices = None
    if is_hybrid_mesh(group):
        # gather over ulysses (minor) then ring (major): buffer slot r*U+u holds the
        # shard of mesh member (ring r, ulysses u), i.e. sequence slice slices[r][u]
        ug, rg = hybrid_groups(group)
        gathered = all_gather_seq(all_gather_seq(x, dim, ug), dim, rg)
        slices = tuple(s for row in hybrid_slices(group) for s in row)
        slices = None if slices == tuple(range(world)) else slices
    else:
        gathered = all_gather_seq(x, dim, resolve_group(group))  # (..., L @ dim, ...)
    if isinstance(lay, Contiguous) and slices is None:
        return gathered
    length = gathered.shape[dim]
    _, inverse = lay.rank_order(world, length, x.device, slices)
    return gathered.index_select(dim, inverse)
