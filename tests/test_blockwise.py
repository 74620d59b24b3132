"""GradAccumulator: writes where nothing was yet, adds elsewhere, zeroes only what no block
reached; it must equal the plain "zeros, then +=" sum for any pattern of runs."""

from __future__ import annotations

import random

import torch

from seqpar.attention.blockwise import GradAccumulator


def _runs(rng: random.Random, length: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(rng.randint(0, 5)):
        lo = rng.randrange(length)
        out.append((lo, rng.randint(lo + 1, length)))
    return out


def test_grad_accumulator_matches_zero_then_add():
    rng = random.Random(0)
    for trial in range(200):
        length, stacked = rng.randint(1, 12), trial % 2 == 0
        shape = (2, 1, 2, length, 3) if stacked else (1, 2, length, 3)
        full = trial % 3 == 0
        start = torch.randn(shape, dtype=torch.float64)
        acc = GradAccumulator(start.clone() if full else torch.full(shape, float("nan"),
                                                                      dtype=torch.float64),
                              full=full)
        expect = start.clone() if full else torch.zeros(shape, dtype=torch.float64)
        for lo, hi in _runs(rng, length):
            if stacked:
                gk, gv = (torch.randn(1, 2, hi - lo, 3, dtype=torch.float64) for _ in "kv")
                acc.add(lo, hi, gk, gv)
                expect[0][..., lo:hi, :] += gk
                expect[1][..., lo:hi, :] += gv
            else:
                g = torch.randn(1, 2, hi - lo, 3, dtype=torch.float64)
                acc.add(lo, hi, g)
                expect[..., lo:hi, :] += g
        torch.testing.assert_close(acc.finish(), expect, rtol=0, atol=1e-12)


def test_reorder_by_runs_matches_index_select():
    import seqpar
    from seqpar.attention.reorder import MAX_RUNS, pieces_for, reorder

    for layout in ("zigzag", "contiguous", seqpar.Striped(block=4), seqpar.Striped(block=1)):
        order, inverse = seqpar.layout.get_layout(layout).rank_order(4, 64)
        x = torch.randn(2, 1, 3, 64, 5, dtype=torch.float64, requires_grad=True)
        y = reorder(x, 3, inverse, order)
        torch.testing.assert_close(y, x.index_select(3, inverse), rtol=0, atol=0)
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, g)
        torch.testing.assert_close(gx, torch.zeros_like(x).index_add(3, inverse, g),
                                   rtol=0, atol=0)
    # zigzag: 2P chunks, rank P-1's two are adjacent and merge
    assert len(pieces_for(seqpar.layout.get_layout("zigzag").rank_order(4, 64)[1])) == 7
    assert len(pieces_for(seqpar.Striped(block=1).rank_order(4, 256)[1])) > MAX_RUNS
