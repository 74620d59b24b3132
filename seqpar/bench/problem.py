"""The benchmark's problems and variants, and the seeded inputs every variant shares.

A problem is one point of the grid (length, heads, mask, dtype); a variant is one
thing that runs it (a seqpar strategy + layout, a peer with its options, the
one-device ceiling), produced by a runner (``runners/``). Every variant of a
problem sees the same global q/k/v/dout: one seeded generator, cut to the rows a
rank holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .report import human_length


@dataclass(frozen=True)
class Problem:
    """One point of the grid: every variant of a problem sees the same global q/k/v/dout."""

    batch: int
    hq: int
    hkv: int
    d: int
    length: int
    causal: bool
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return (f"L={human_length(self.length)} hkv={self.hkv} "
                f"{'causal' if self.causal else 'full'}")

    def seed(self, base: int) -> int:
        """The problem's generator seed for ``--seed base``."""
        return (base * 1_000_003 + self.length * 31 + self.hkv) % (2**62)

    def inputs(self, device: torch.device, seed: int, positions: torch.Tensor | None = None,
               count: int = 4, length: int | None = None) -> list[torch.Tensor]:
        """q, k, v, dout (the first ``count``) of the global problem, cut to ``positions``
        along the sequence (same values on every rank and for every variant).

        Full tensors are generated one at a time and freed before timing, so they
        never count towards a variant's peak memory.
        """
        length = self.length if length is None else length
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        out = []
        for heads in (self.hq, self.hkv, self.hkv, self.hq)[:count]:
            # (B, H, L, D), then (B, H, len(positions), D)
            full = torch.randn((self.batch, heads, length, self.d), generator=g,
                               device=device, dtype=self.dtype)
            out.append(full if positions is None else full.index_select(2, positions))
            del full
        return out


@dataclass(frozen=True)
class Variant:
    """What runs a problem: a seqpar strategy+layout, a peer, or the SDPA ceiling.

    ``kind`` is what the report groups by ("seqpar" | "peer" | "ceiling");
    ``runner`` names the registered runner (``grid.RUNNERS``) that builds it.
    """

    kind: str
    name: str
    strategy: str | None = None
    layout: str | None = None
    backend: str | None = None
    rotate: str | None = None
    ulysses: int | None = None  # hybrid: U of the U x R mesh
    runner: str = ""
