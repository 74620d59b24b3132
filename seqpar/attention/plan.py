"""Which (q block, kv block) pairs to compute, and with which mask.

A plan is built from the global positions a rank's queries and a kv buffer hold
(as runs of consecutive positions, see ``Layout.segments``). Under a causal
mask every pair decomposes into full rectangles and top-left-aligned diagonal
squares; pairs entirely above the diagonal are *skipped, not masked*. The same
plans drive ring steps, all-gather and single-device attention, and their
``work`` is what the load-balance tests count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """Local rows ``[q0, q1)`` against local kv columns ``[k0, k1)``.

    ``causal`` means the square is on the diagonal (row i sees columns <= i,
    top-left aligned); otherwise every row sees every column.
    """

    q0: int
    q1: int
    k0: int
    k1: int
    causal: bool

    @property
    def work(self) -> int:
        """Query-key pairs computed (a diagonal square counts its lower triangle)."""
        n, m = self.q1 - self.q0, self.k1 - self.k0
        return n * (n + 1) // 2 if self.causal else n * m


Segments = list[tuple[int, int]]  # [(global_start, length), ...] in local order


def _with_offsets(segments: Segments) -> list[tuple[int, int, int]]:
    """[(global_start, length, local_offset)], merging runs that continue each other."""
    merged: list[list[int]] = []
    for start, n in segments:
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1][1] += n
        else:
            merged.append([start, n])
    out, off = [], 0
    for start, n in merged:
        out.append((start, n, off))
        off += n
    return out


def _causal_pair(a: int, n: int, qo: int, c: int, m: int, ko: int) -> list[Block]:
    """Blocks for queries at global [a, a+n) against keys at global [c, c+m)."""
    blocks = []
    full_end = min(c + m, a)  # keys before the first query: seen by every row
    if full_end > c:
        blocks.append(Block(qo, qo + n, ko, ko + full_end - c, False))
    s, e = max(a, c), min(a + n, c + m)  # overlap of the two ranges: the diagonal
    if s < e:
        blocks.append(Block(qo + s - a, qo + e - a, ko + s - c, ko + e - c, True))
        if e < a + n:  # rows below the square see all of it
            blocks.append(Block(qo + e - a, qo + n, ko + s - c, ko + e - c, False))
    return blocks


def make_plan(q_segments: Segments, kv_segments: Segments, causal: bool) -> list[Block]:
    """All blocks for local queries at ``q_segments`` against keys at ``kv_segments``."""
    qs, ks = _with_offsets(q_segments), _with_offsets(kv_segments)
    if not causal:
        lq = sum(n for _, n, _ in qs)
        lk = sum(n for _, n, _ in ks)
        return [Block(0, lq, 0, lk, False)] if lq and lk else []
    plan = []
    for a, n, qo in qs:
        for c, m, ko in ks:
            plan.extend(_causal_pair(a, n, qo, c, m, ko))
    return plan


def plan_work(plan: list[Block]) -> int:
    """Query-key pairs a plan computes (per batch and head)."""
    return sum(b.work for b in plan)
