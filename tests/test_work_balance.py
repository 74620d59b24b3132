"""Causal work per rank: zigzag balances to within one block, contiguous does not."""

from __future__ import annotations

import pytest

import seqpar


@pytest.mark.parametrize("world", [2, 3, 4, 8])
@pytest.mark.parametrize("strategy", ["ring", "allgather", "rsa"])
def test_zigzag_balanced(world, strategy):
    chunk = 16
    length = 2 * world * chunk
    work = seqpar.work_per_rank(strategy=strategy, world=world, length=length, causal=True,
                                layout="zigzag")
    block = chunk * chunk
    assert max(work) - min(work) <= block, work
    total_pairs = length * (length + 1) // 2
    assert sum(work) == total_pairs  # every visible pair exactly once, no masked waste


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_contiguous_skewed(world):
    length = 2 * world * 16
    work = seqpar.work_per_rank(strategy="ring", world=world, length=length, causal=True)
    assert work == sorted(work) and work[-1] > (2 * world - 1) * work[0] * 0.9, work
    assert sum(work) == length * (length + 1) // 2


def test_full_attention_uniform():
    work = seqpar.work_per_rank(strategy="ring", world=4, length=64, causal=False,
                                layout="striped")
    assert work == [16 * 64] * 4


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_striped_one_block_per_step_and_balanced(world):
    from seqpar.attention.plan import pair_plan

    n = 32
    length = n * world
    lay = seqpar.Striped()
    for rank in range(world):
        for src in range(world):
            assert len(pair_plan(lay, rank, src, world, length, True)) == 1
    work = seqpar.work_per_rank(strategy="ring", world=world, length=length, causal=True,
                                layout="striped")
    assert sum(work) == length * (length + 1) // 2
    assert max(work) - min(work) <= world * n, work  # off by at most one row per step
