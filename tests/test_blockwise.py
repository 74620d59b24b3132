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
    from seqpar.attention.reorder import MAX_RUNS, rank_order_pieces, to_global_order

    for layout in ("zigzag", "contiguous", seqpar.Striped(block=4), seqpar.Striped(block=1)):
        lay = seqpar.layout.get_layout(layout)
        for world in (1, 3, 4):
            length = 24 * world
            _, inverse = lay.rank_order(world, length)
            x = torch.randn(2, 1, 3, length, 5, dtype=torch.float64, requires_grad=True)
            y = to_global_order(x, 3, lay, world)
            torch.testing.assert_close(y, x.index_select(3, inverse), rtol=0, atol=0)
            g = torch.randn_like(y)
            (gx,) = torch.autograd.grad(y, x, g)
            torch.testing.assert_close(gx, torch.zeros_like(x).index_add(3, inverse, g),
                                       rtol=0, atol=0)
    # zigzag: 2P chunks, rank P-1's two are adjacent in both orders and merge
    to_global, to_rank = rank_order_pieces(seqpar.layout.get_layout("zigzag"), 4, 64)
    assert len(to_global) == len(to_rank) == 7
    assert len(rank_order_pieces(seqpar.Striped(block=1), 4, 256)[0]) > MAX_RUNS
