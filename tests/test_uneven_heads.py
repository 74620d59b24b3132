"""Issue 12.2: Ulysses and hybrid with head counts the group does not divide (DeepSpeed:
3 heads on 2 ranks = 2 + 1, 7 on 2 = 4 + 3), GQA included: exact forward and backward,
the imbalance reported by work_per_rank; only P > Hq raises."""

from __future__ import annotations

import pytest
import torch
from parity import check_case, make_problem

import seqpar

#: (Hq, Hkv) per world size: Hq in {3, 5, 7, 28}, GQA where Hq allows, never P | Hq only
CASES = {2: [(3, 3), (3, 1), (7, 7), (7, 1), (5, 5), (28, 4)],
         3: [(5, 5), (5, 1), (7, 7), (28, 4), (28, 14)],
         4: [(3, 3), (5, 5), (7, 1), (28, 4), (28, 2)]}


def _uneven(rank, world):
    failures = []
    for hq, hkv in CASES[world]:
        if world <= hq:
            full = make_problem(hq * 10 + hkv, b=2, hq=hq, hkv=hkv, length=4 * world, d=8)
            for layout in ("contiguous", "zigzag"):
                for causal in (False, True):
                    failures += check_case(strategy="ulysses", layout=layout, causal=causal,
                                           dtype=torch.float64, group=None, full=full,
                                           rank=rank, world=world, label=f"hq{hq}/hkv{hkv}")
    if world == 4:  # hybrid 2 x 2 with odd head counts inside the ulysses dim
        mesh = seqpar.hybrid_mesh(2, 2, "cpu")
        for hq, hkv in ((3, 3), (3, 1), (7, 7), (5, 1)):
            full = make_problem(hq + hkv, b=1, hq=hq, hkv=hkv, length=16, d=8)
            for layout in ("contiguous", "zigzag", "striped"):
                for causal in (False, True):
                    failures += check_case(strategy="hybrid", layout=layout, causal=causal,
                                           dtype=torch.float64, group=mesh, full=full,
                                           rank=rank, world=world, label=f"hq{hq}/hkv{hkv}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_uneven_heads_exact(spawn, world):
    spawn(_uneven, world)


def _eight(rank, world):
    """P = 8: 28 query heads (4 kv) over 8 ranks, and the P > Hq error."""
    full = make_problem(8, b=1, hq=28, hkv=4, length=16, d=4)
    failures = check_case(strategy="ulysses", layout="zigzag", causal=True,
                          dtype=torch.float64, group=None, full=full, rank=rank, world=world,
                          label="hq28/hkv4")
    assert not failures, "\n".join(failures)
    x = torch.randn(1, 5, 2, 4)
    with pytest.raises(ValueError, match=r"Hq=5 \(use strategy='hybrid'"):
        seqpar.attention(x, x, x, strategy="ulysses")


def test_uneven_heads_eight_ranks(spawn):
    spawn(_eight, 8)


def test_uneven_heads_work_reported():
    length = 64
    total = length * (length + 1) // 2
    even = seqpar.work_per_rank(strategy="ulysses", world=2, length=length, causal=True)
    assert even == [total // 2] * 2
    work = seqpar.work_per_rank(strategy="ulysses", world=2, length=length, causal=True,
                                heads=7)
    assert work == [total * 4 // 7, total * 3 // 7]  # 4 + 3 heads: imbalance shown
    hybrid = seqpar.work_per_rank(strategy="hybrid", world=4, length=length, causal=True,
                                  layout="zigzag", ulysses=2, heads=3)
    assert hybrid[0] > hybrid[1] and hybrid[2] > hybrid[3]  # 2 + 1 heads per ulysses pair
    assert abs(sum(hybrid) - total) <= 4
