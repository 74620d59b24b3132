"""Every strategy x causal x dtype x world size: output and grads vs dense float64."""

from __future__ import annotations

import pytest
import torch
from parity import ONE_D_STRATEGIES, check_case, make_problem

DTYPES = [torch.float64, torch.float32, torch.bfloat16]
# Hq=12 divides by 1, 2, 3, 4 (Ulysses); Hkv=6 exercises GQA where it divides too.
SHAPES = [dict(b=2, hq=12, hkv=12, d=16), dict(b=1, hq=12, hkv=6, d=8)]


def _grid(rank, world):
    failures = []
    for si, shape in enumerate(SHAPES):
        full = make_problem(100 + si, length=8 * world, **shape)
        for strategy in ONE_D_STRATEGIES:
            for causal in (False, True):
                for dtype in DTYPES:
                    failures += check_case(strategy=strategy, layout="contiguous",
                                           causal=causal, dtype=dtype, group=None,
                                           full=full, rank=rank, world=world,
                                           label=f"shape{si}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_parity_distributed(spawn, world):
    spawn(_grid, world)


def test_parity_single_process_without_distributed():
    _grid(0, 1)


def test_parity_world_of_one(spawn):
    spawn(_grid, 1)
