"""Collectives: round trips, adjoints, and bytes on the wire equal to DESIGN §1."""

from __future__ import annotations

import pytest
import torch
from parity import ONE_D_STRATEGIES

import seqpar  # noqa: F401
from seqpar import comm


def expected_bytes(strategy, world, b, hq, hkv, ls, d, dtype):
    """Bytes one rank sends: (forward, backward), per DESIGN §1."""
    e = torch.empty((), dtype=dtype).element_size()
    acc = 8 if dtype == torch.float64 else 4
    n_q, n_kv = b * hq * ls * d, b * hkv * ls * d
    p = world
    if strategy == "ring":  # KV ring P-1 hops; bwd KV again + fp32 dKV P hops
        return (p - 1) * 2 * n_kv * e, (p - 1) * 2 * n_kv * e + p * 2 * n_kv * acc
    if strategy == "rsa":  # K ring, V ring; bwd V (+dV) ring, K (+dK) ring
        return 2 * (p - 1) * n_kv * e, 2 * ((p - 1) * n_kv * e + p * n_kv * acc)
    if strategy == "allgather":  # all-gather KV; bwd reduce-scatter dKV
        return (p - 1) * 2 * n_kv * e, (p - 1) * 2 * n_kv * e
    if strategy == "ulysses":  # a2a(q,k,v) + a2a(out); bwd a2a(dout) + a2a(dq,dk,dv)
        vol = (n_q + 2 * n_kv + n_q) * e
        return vol * (p - 1) // p, vol * (p - 1) // p
    raise AssertionError(strategy)


def _bytes(rank, world):
    b, hq, hkv, ls, d = 1, 4 * world, 2 * world, 6, 8
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for strategy in ONE_D_STRATEGIES:
            for causal in (False, True):
                q = torch.randn(b, hq, ls, d, dtype=dtype, requires_grad=True)
                k = torch.randn(b, hkv, ls, d, dtype=dtype, requires_grad=True)
                v = torch.randn(b, hkv, ls, d, dtype=dtype, requires_grad=True)
                with comm.count_bytes() as fwd:
                    out = seqpar.attention(q, k, v, strategy=strategy, causal=causal)
                with comm.count_bytes() as bwd:
                    out.sum().backward()
                want = expected_bytes(strategy, world, b, hq, hkv, ls, d, dtype)
                got = (fwd.bytes_sent, bwd.bytes_sent)
                assert got == want, (strategy, causal, dtype, got, want, dict(fwd.calls))


@pytest.mark.parametrize("world", [2, 3])
def test_bytes_match_formula(spawn, world):
    spawn(_bytes, world)


def _collectives(rank, world):
    # B=2 and B=1: one point-to-point message per (sequence, peer) either way
    for b in (2, 1):
        torch.manual_seed(rank)
        x = torch.randn(b, 2 * world, 5, 3, dtype=torch.float64, requires_grad=True)
        y = torch.randn(b, world, 5, 3, dtype=torch.float64, requires_grad=True)
        xh, yh = comm.seq_to_heads(x, y, group=None)
        assert xh.shape == (b, 2, 5 * world, 3), xh.shape
        assert yh.shape == (b, 1, 5 * world, 3), yh.shape
        xb, yb = comm.heads_to_seq(xh, yh, group=None)
        assert torch.equal(xb, x) and torch.equal(yb, y)
        # full-sequence view: shard s of head h on rank r comes from rank s
        full = seqpar.unshard(x.detach(), dim=2)
        assert torch.equal(xh.detach(), full[:, 2 * rank:2 * rank + 2])
        # the round trip is the identity, so are its gradients (both directions' backward)
        gx, gy = torch.randn_like(x), torch.randn_like(y)
        dx, dy = torch.autograd.grad((xb, yb), (x, y), (gx, gy))
        assert torch.equal(dx, gx) and torch.equal(dy, gy)
    torch.manual_seed(rank)
    x = torch.randn(2, 2 * world, 5, 3, dtype=torch.float64, requires_grad=True)
    # adjoint: <AG(x), g> summed over ranks == <x, RS(g)>
    g = torch.randn(2, 2 * world, 5 * world, 3, dtype=torch.float64)
    ag = comm.all_gather_seq(x, 2, None)
    (ag * g).sum().backward()
    rs = comm.reduce_scatter_seq(g, 2, None)
    assert torch.allclose(x.grad, rs)


def test_collectives(spawn):
    spawn(_collectives, 3)
