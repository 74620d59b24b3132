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
