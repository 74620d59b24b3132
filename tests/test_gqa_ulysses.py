"""GQA/MQA head ratios for every strategy, and the pipelined (head-chunked) Ulysses."""

from __future__ import annotations

import torch
from parity import ONE_D_STRATEGIES, check_case, dense_reference, make_problem, rel_err

import seqpar

LAYOUTS = ["contiguous", "zigzag", "striped"]



def _gqa(rank, world):
    failures = []
    for hq, hkv in ((8, 8), (8, 4), (8, 2), (8, 1), (16, 2)):  # ratios 1, 2, 4, 8 (MQA)
        full = make_problem(hq + hkv, b=1, hq=hq, hkv=hkv, length=4 * world, d=8)
        for strategy in ONE_D_STRATEGIES:  # ulysses with P > Hkv replicates kv heads
            for causal in (False, True):
                failures += check_case(strategy=strategy, layout="zigzag", causal=causal,
                                       dtype=torch.float64, group=None, full=full, rank=rank,
                                       world=world, label=f"hq{hq}/hkv{hkv}")
    assert not failures, "\n".join(failures)


def test_gqa_ratios(spawn):
    spawn(_gqa, 4)


def _pipelined_ulysses(rank, world):
    """The chunked (pipelined) Ulysses path, off by default, stays exact."""
    from seqpar.attention.ulysses import ulysses_in_order

    q, k, v, dout = (seqpar.shard(t, dim=2) for t in make_problem(9, b=1, hq=12, hkv=6,
                                                                   length=4 * world, d=8))
    ref = dense_reference(q if world == 1 else seqpar.unshard(q, dim=2),
                          seqpar.unshard(k, dim=2), seqpar.unshard(v, dim=2),
                          seqpar.unshard(dout, dim=2), True)
    for chunks in (1, 3):
        ql, kl, vl = (t.clone().requires_grad_() for t in (q, k, v))
        out = ulysses_in_order(ql, kl, vl, group=None, order=None, causal=True,
                               scale=8 ** -0.5, chunks=chunks)
        out.backward(dout)
        for g, r in zip((out, ql.grad, kl.grad, vl.grad), ref):
            assert rel_err(g, seqpar.shard(r, dim=2)) <= 1e-9, chunks


def test_pipelined_ulysses(spawn):
    spawn(_pipelined_ulysses, 2)
