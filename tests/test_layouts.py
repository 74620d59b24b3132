"""Layouts: shard/unshard round trips and exact attention under zigzag and striped."""

from __future__ import annotations

import pytest
import torch
from parity import ONE_D_STRATEGIES, check_case, make_problem

import seqpar

LAYOUTS = ["contiguous", "zigzag", "striped", seqpar.Striped(block=2)]


def test_positions_cover_sequence_once():
    for world in (1, 2, 3, 4, 8):
        for lay in LAYOUTS:
            layout = seqpar.layout.get_layout(lay)
            length = 16 * world
            pos = torch.cat([layout.global_positions(r, world, length) for r in range(world)])
            assert sorted(pos.tolist()) == list(range(length)), (lay, world)


def test_zigzag_chunks():
    z = seqpar.Zigzag()
    assert z.segments(0, 4, 16) == [(0, 2), (14, 2)]
    assert z.segments(3, 4, 16) == [(6, 2), (8, 2)]


def test_length_not_divisible_raises():
    with pytest.raises(ValueError, match="multiple of 6"):
        seqpar.Zigzag().check_length(20, 3)


def _layouts(rank, world):
    failures = []
    full = make_problem(7, b=1, hq=6, hkv=3, length=8 * world, d=8)
    x = torch.arange(8 * world * 3, dtype=torch.float64).reshape(1, 3, 8 * world)
    for lay in LAYOUTS:
        local = seqpar.shard(x, dim=2, layout=lay)
        assert torch.equal(seqpar.unshard(local, dim=2, layout=lay), x), lay
        for strategy in ONE_D_STRATEGIES:
            if strategy == "ulysses" and 6 % world:
                continue  # Hq=6 over 4 ranks: see test_errors
            for causal in (True, False):
                for dtype in (torch.float64, torch.bfloat16):
                    failures += check_case(strategy=strategy, layout=lay, causal=causal,
                                           dtype=dtype, group=None, full=full, rank=rank,
                                           world=world, label=str(lay))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_layout_parity(spawn, world):
    spawn(_layouts, world)
