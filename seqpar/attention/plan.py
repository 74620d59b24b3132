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
from collections import defaultdict
from dataclasses import dataclass

from ..layout import Contiguous, Layout, Runs, merge_runs


@dataclass(frozen=True)
class ScoreBlock:
    """A block of the score matrix: local rows ``[q0, q1)`` against local kv columns ``[k0, k1)``.

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


def _with_offsets(runs: Runs) -> list[tuple[int, int, int]]:
    """[(global_start, length, local_offset)], merging runs that continue each other."""
    out, off = [], 0
    for start, n in merge_runs(runs):
        out.append((start, n, off))
        off += n
    return out


def _causal_pair(a: int, n: int, qo: int, c: int, m: int, ko: int) -> list[ScoreBlock]:
    """Blocks for queries at global [a, a+n) against keys at global [c, c+m)."""
    blocks = []
    full_end = min(c + m, a)  # keys before the first query: seen by every row
    if full_end > c:
        blocks.append(ScoreBlock(qo, qo + n, ko, ko + full_end - c, False))
    s, e = max(a, c), min(a + n, c + m)  # overlap of the two ranges: the diagonal
    if s < e:
        blocks.append(ScoreBlock(qo + s - a, qo + e - a, ko + s - c, ko + e - c, True))
        if e < a + n:  # rows below the square see all of it
            blocks.append(ScoreBlock(qo + e - a, qo + n, ko + s - c, ko + e - c, False))
    return blocks


def _pair(a, n, qo, c, m, ko, causal: bool) -> list[ScoreBlock]:
    if causal:
        return _causal_pair(a, n, qo, c, m, ko)
    return [ScoreBlock(qo, qo + n, ko, ko + m, False)] if n and m else []


def _document_pairs(a, n, qo, c, m, ko, causal, documents, starts) -> list[ScoreBlock]:
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


def _ascending(runs: Runs) -> bool:
    """Runs in increasing global order (local order = global order)."""
    return all(x[0] + x[1] <= y[0] for x, y in zip(runs, runs[1:]))


def _causal_sorted(qs, ks) -> list[ScoreBlock]:
    """Causal blocks when the kv runs ascend in global position (local order = global
    order): the runs wholly before a query run are a local prefix, one full block;
    only the runs overlapping it need ``_causal_pair``. O(q runs · log kv runs)."""
    ends = [c + m for c, m, _ in ks]
    plan = []
    for a, n, qo in qs:
        first = bisect_right(ends, a)  # first kv run not wholly before the query run
        prefix = ks[first][2] if first < len(ks) else sum(m for _, m, _ in ks)
        if prefix:
            plan.append(ScoreBlock(qo, qo + n, 0, prefix, False))
        for c, m, ko in ks[first:]:
            if c >= a + n:
                break
            plan.extend(_causal_pair(a, n, qo, c, m, ko))
    return plan


def make_plan(q_segments: Runs, kv_segments: Runs, causal: bool,
              documents: list[tuple[int, int]] | None = None) -> list[ScoreBlock]:
    """All blocks for local queries at ``q_segments`` against keys at ``kv_segments``.

    ``documents`` (global ``[start, end)`` of packed documents, sorted) confines
    attention to each document; block pairs that share no document vanish.
    """
    qs, ks = _with_offsets(q_segments), _with_offsets(kv_segments)
    if not causal and documents is None:
        lq = sum(n for _, n, _ in qs)
        lk = sum(n for _, n, _ in ks)
        return [ScoreBlock(0, lq, 0, lk, False)] if lq and lk else []
    if documents is None and _ascending([(c, m) for c, m, _ in ks]):
        return coalesce(_causal_sorted(qs, ks))
    starts = [s for s, _ in documents] if documents is not None else None
    plan = []
    for a, n, qo in qs:
        for c, m, ko in ks:
            if documents is None:
                plan.extend(_causal_pair(a, n, qo, c, m, ko))
            else:
                plan.extend(_document_pairs(a, n, qo, c, m, ko, causal, documents, starts))
    return coalesce(plan)


def _merge_pass(blocks: list[ScoreBlock], by_rows: bool) -> list[ScoreBlock]:
    """One pass: full blocks sharing rows (``by_rows``) or columns, abutting -> one."""
    groups: dict[tuple[int, int], list[ScoreBlock]] = defaultdict(list)
    out = []
    for b in blocks:
        if b.causal:
            out.append(b)
        else:
            groups[(b.q0, b.q1) if by_rows else (b.k0, b.k1)].append(b)
    for group in groups.values():
        group.sort(key=lambda b: b.k0 if by_rows else b.q0)
        run = group[0]
        for b in group[1:]:
            if by_rows and run.k1 == b.k0:
                run = ScoreBlock(run.q0, run.q1, run.k0, b.k1, False)
            elif not by_rows and run.q1 == b.q0:
                run = ScoreBlock(run.q0, b.q1, run.k0, run.k1, False)
            else:
                out.append(run)
                run = b
        out.append(run)
    return out


def coalesce(plan: list[ScoreBlock]) -> list[ScoreBlock]:
    """Merge full blocks that abut: same kv columns and consecutive rows, or same rows
    and consecutive columns. Under zigzag this turns a ring step's two half-blocks
    into one kernel call (all queries x first kv half, or second query half x all kv).
    Each pass is a sort per group (O(n log n)); passes alternate until nothing merges."""
    blocks, by_rows = list(plan), True
    stable = 0
    while stable < 2:  # until a row pass and a column pass in a row merge nothing
        merged = _merge_pass(blocks, by_rows)
        stable = stable + 1 if len(merged) == len(blocks) else 0
        blocks, by_rows = merged, not by_rows
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


def pair_plan(layout: Layout, rank: int, src: int, world: int, length: int, causal: bool,
              documents=None) -> list[ScoreBlock]:
    """Blocks for rank ``rank``'s queries against rank ``src``'s keys, both in ``layout``:
    the layout's closed form when it has one (``Layout.closed_form``), else from runs."""
    if causal and documents is None:
        blocks = layout.closed_form(rank, src, world, length)
        if blocks is not None:
            return [ScoreBlock(*b) for b in blocks]
    return make_plan(layout.segments(rank, world, length), layout.segments(src, world, length),
                     causal, documents)


def slices_plan(layout: Layout, q_slices: list[int], kv_slices: list[int], world: int,
                length: int, causal: bool, documents=None) -> list[ScoreBlock]:
    """Blocks for a buffer of queries holding the shards of ``q_slices`` (in that order,
    each ``length // world`` long) against a kv buffer holding ``kv_slices``.

    With a closed form (causal, no documents), or when the concatenated runs are not in
    global order (then each slice pair is cheap to plan, its runs being sorted), one
    ``pair_plan`` per slice pair, shifted to where the slices lie; otherwise one plan
    from the concatenated runs (adjacent slices merge into one run, so a contiguous
    hybrid ring step stays one block).
    """
    n = length // world
    q_runs = merge_runs([seg for a in q_slices for seg in layout.segments(a, world, length)])
    kv_runs = merge_runs([seg for c in kv_slices for seg in layout.segments(c, world, length)])
    closed = causal and documents is None and layout.closed_form(
        q_slices[0], kv_slices[0], world, length) is not None
    if not closed and (not causal or documents is not None or _ascending(kv_runs)):
        return make_plan(q_runs, kv_runs, causal, documents)
    return coalesce([ScoreBlock(b.q0 + i * n, b.q1 + i * n, b.k0 + j * n, b.k1 + j * n,
                                b.causal)
                     for i, a in enumerate(q_slices) for j, c in enumerate(kv_slices)
                     for b in pair_plan(layout, a, c, world, length, causal)])


def allgather_reorders(layout: Layout, world: int, length: int, causal: bool,
                       documents=None) -> bool:
    """Whether allgather puts the gathered K/V into global order first: for non-contiguous
    layouts under a mask, unless the layout's closed form plans the rank order directly
    (then each query run needs one full and one diagonal block, not one per kv run)."""
    if causal and documents is None and layout.closed_form(0, 0, world, length) is not None:
        return False
    return not isinstance(layout, Contiguous) and (causal or documents is not None)


def strategy_plans(strategy: str, layout: Layout, rank: int, world: int, length: int,
                   causal: bool, documents=None, slices: list[list[int]] | None = None,
                   ulysses: int = 1) -> list[list[ScoreBlock]]:
    """The plans ``rank`` executes under ``strategy``, built exactly as the strategy builds
    them (the strategies call this): ring/rsa one per step, allgather and ulysses one,
    hybrid one per ring step of the rank's ring member. ``slices[r][u]``: the hybrid
    mesh's slices (default ``seqpar.hybrid_mesh`` order, ``r·U + u``)."""
    if strategy in ("ring", "rsa"):
        return [pair_plan(layout, rank, (rank - s) % world, world, length, causal, documents)
                for s in range(world)]
    if strategy == "ulysses":
        return [make_plan([(0, length)], [(0, length)], causal, documents)]
    if strategy == "allgather":
        if allgather_reorders(layout, world, length, causal, documents):
            return [make_plan(layout.segments(rank, world, length), [(0, length)], causal,
                              documents)]
        return [slices_plan(layout, [rank], list(range(world)), world, length, causal,
                            documents)]
    if strategy == "hybrid":
        ring = world // ulysses
        if slices is None:
            slices = [[r * ulysses + u for u in range(ulysses)] for r in range(ring)]
        me = next(r for r, row in enumerate(slices) if rank in row)
        return [slices_plan(layout, slices[me], slices[(me - s) % ring], world, length, causal,
                            documents) for s in range(ring)]
    raise ValueError(f"unknown strategy {strategy!r}")


def plan_work(plan: list[ScoreBlock]) -> int:
    """Query-key pairs a plan computes (per batch and head)."""
    return sum(b.work for b in plan)
