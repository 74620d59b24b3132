"""Which (q block, kv block) pairs to compute, and with which mask.

A plan is built from the global positions a rank's queries and a kv buffer hold
(as runs of consecutive positions, see ``Layout.segments``). Under a causal
mask every pair decomposes into full rectangles and top-left-aligned diagonal
squares; pairs entirely above the diagonal are *skipped, not masked*. The same
plans drive ring steps, all-gather and single-device attention, and their
``work`` is what the load-balance tests count.
"""

from __future__ import annotations

from bisect import bisect_right
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


def _pair(a, n, qo, c, m, ko, causal: bool) -> list[Block]:
    if causal:
        return _causal_pair(a, n, qo, c, m, ko)
    return [Block(qo, qo + n, ko, ko + m, False)] if n and m else []


def _document_pairs(a, n, qo, c, m, ko, causal, documents, starts) -> list[Block]:
    """Blocks restricted to each document both ranges share: no cross-document pair."""
    blocks = []
    # a document overlaps both ranges iff it starts before both end and ends after both start
    lo, hi = max(a, c), min(a + n, c + m)
    first = max(0, bisect_right(starts, lo) - 1)
    for s, e in documents[first:]:
        if s >= hi:
            break
        qa, qb = max(a, s), min(a + n, e)
        kc, kd = max(c, s), min(c + m, e)
        if qa < qb and kc < kd:
            blocks += _pair(qa, qb - qa, qo + qa - a, kc, kd - kc, ko + kc - c, causal)
    return blocks


def make_plan(q_segments: Segments, kv_segments: Segments, causal: bool,
              documents: list[tuple[int, int]] | None = None) -> list[Block]:
    """All blocks for local queries at ``q_segments`` against keys at ``kv_segments``.

    ``documents`` (global ``[start, end)`` of packed documents, sorted) confines
    attention to each document; block pairs that share no document vanish.
    """
    qs, ks = _with_offsets(q_segments), _with_offsets(kv_segments)
    if not causal and documents is None:
        lq = sum(n for _, n, _ in qs)
        lk = sum(n for _, n, _ in ks)
        return [Block(0, lq, 0, lk, False)] if lq and lk else []
    starts = [s for s, _ in documents] if documents is not None else None
    plan = []
    for a, n, qo in qs:
        for c, m, ko in ks:
            if documents is None:
                plan.extend(_causal_pair(a, n, qo, c, m, ko))
            else:
                plan.extend(_document_pairs(a, n, qo, c, m, ko, causal, documents, starts))
    return coalesce(plan)


def coalesce(plan: list[Block]) -> list[Block]:
    """Merge full blocks that abut: same kv columns and consecutive rows, or same rows
    and consecutive columns. Under zigzag this turns a ring step's two half-blocks
    into one kernel call (all queries x first kv half, or second query half x all kv)."""
    changed = True
    blocks = list(plan)
    while changed:
        changed = False
        for i, x in enumerate(blocks):
            if x.causal:
                continue
            for j, y in enumerate(blocks):
                if j == i or y.causal:
                    continue
                if (x.k0, x.k1) == (y.k0, y.k1) and x.q1 == y.q0:
                    merged = Block(x.q0, y.q1, x.k0, x.k1, False)
                elif (x.q0, x.q1) == (y.q0, y.q1) and x.k1 == y.k0:
                    merged = Block(x.q0, x.q1, x.k0, y.k1, False)
                else:
                    continue
                blocks = [b for t, b in enumerate(blocks) if t not in (i, j)] + [merged]
                changed = True
                break
            if changed:
                break
    return sorted(blocks, key=lambda b: (b.q0, b.k0))


def documents_from_cu_seqlens(cu_seqlens, length: int) -> list[tuple[int, int]]:
    """``[0, l1, l1+l2, ..., L]`` -> ``[(0, l1), (l1, l1+l2), ...]``, validated."""
    bounds = [int(x) for x in (cu_seqlens.tolist() if hasattr(cu_seqlens, "tolist")
                                else cu_seqlens)]
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != length:
        raise ValueError(f"cu_seqlens must start at 0 and end at the global length L={length}, "
                         f"got first={bounds[0] if bounds else None}, "
                         f"last={bounds[-1] if bounds else None} ({len(bounds)} entries)")
    if any(b2 < b1 for b1, b2 in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {bounds[:16]}...")
    return [(s, e) for s, e in zip(bounds, bounds[1:]) if e > s]


def pair_plan(layout, rank: int, src: int, world: int, length: int, causal: bool,
              documents=None) -> list[Block]:
    """Blocks for rank ``rank``'s queries against rank ``src``'s keys, both in ``layout``.

    Token-striped layouts (block 1) get a closed form instead of one block per token
    pair: query i (global ``i·P + rank``) sees key j (global ``j·P + src``) iff
    ``j <= i`` when ``src <= rank``, else ``j < i``: one top-left causal square, or
    the same square shifted by one (rows 1.. against keys ..-1).
    """
    if causal and documents is None and getattr(layout, "name", "") == "striped" \
            and getattr(layout, "block", None) == 1:
        n = length // world
        if src <= rank:
            return [Block(0, n, 0, n, True)]
        return [Block(1, n, 0, n - 1, True)] if n > 1 else []
    return make_plan(layout.segments(rank, world, length), layout.segments(src, world, length),
                     causal, documents)


def plan_work(plan: list[Block]) -> int:
    """Query-key pairs a plan computes (per batch and head)."""
    return sum(b.work for b in plan)
