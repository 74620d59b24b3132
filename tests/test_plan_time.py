"""Issue 11: planning cost never explodes with L. For every strategy x layout x causal,
the plans all ranks build are timed at L and 4L: the time may grow at most like the
attention work (16x), with an absolute bound; hybrid over striped uses the closed form."""

from __future__ import annotations

import time

import pytest

import seqpar
from seqpar.attention.plan import strategy_plans

LAYOUTS = ["contiguous", "zigzag", "striped", seqpar.Striped(block=4)]
WORLD, ULYSSES = 4, 2


def _plan_all(strategy, layout, length, causal) -> float:
    lay = seqpar.layout.get_layout(layout)
    start = time.perf_counter()
    for rank in range(WORLD):
        strategy_plans(strategy, lay, rank, WORLD, length, causal, ulysses=ULYSSES)
    return time.perf_counter() - start


def _best(*args) -> float:
    return min(_plan_all(*args) for _ in range(3))  # least noisy of three


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("strategy", seqpar.STRATEGIES)
def test_planning_time_bounded_by_work(strategy, layout, causal):
    length = 1024
    small, large = _best(strategy, layout, length, causal), _best(strategy, layout, 4 * length,
                                                                   causal)
    # work grows 16x from L to 4L; allow that plus 0.25 s of noise on a loaded machine
    # (the bug this guards against grew ~32x per doubling of L: 1.6 s at L=64, 51 s at 128)
    assert large <= 16 * small + 0.25, (small, large)
    assert large < 1.0, large  # before the fix: hybrid x striped took 51 s at L=128


def test_hybrid_striped_uses_closed_form():
    lay = seqpar.layout.get_layout("striped")
    length = 1 << 16
    plans = strategy_plans("hybrid", lay, 0, WORLD, length, True, ulysses=ULYSSES)
    # one block per (query slice, kv slice) pair: U*U per ring step, whatever L
    assert all(len(p) <= ULYSSES * ULYSSES for p in plans), [len(p) for p in plans]
    work = seqpar.work_per_rank(strategy="hybrid", world=WORLD, length=length, causal=True,
                                layout="striped", ulysses=ULYSSES)
    assert sum(work) * 1 == length * (length + 1) // 2
