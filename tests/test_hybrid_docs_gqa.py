"""Hybrid Ulysses x ring meshes, packed documents, GQA/MQA ratios, padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parity import ONE_D_STRATEGIES, TOL, check_case, dense_reference, make_problem, rel_err
from torch.distributed.device_mesh import init_device_mesh

import seqpar

LAYOUTS = ["contiguous", "zigzag", "striped"]


def _hybrid(rank, world, shape, hand_built=False):
    u, r = shape
    if hand_built:  # the other order: Ulysses groups of stride R (exact, but use hybrid_mesh)
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=("ulysses", "ring"))
    else:
        mesh = seqpar.hybrid_mesh(u, r, "cpu")
    failures = []
    length = 4 * world
    heads = ((4, 4), (4, 2), (4, 1)) if u != 3 else ((6, 6), (6, 3), (6, 1))
    for hq, hkv in heads:
        full = make_problem(11 + hkv, b=1, hq=hq, hkv=hkv, length=length, d=8)
        docs = torch.tensor([0, 3, length // 2 + 1, length], dtype=torch.int32)
        for layout in LAYOUTS:
            for causal in (False, True):
                for cu in (None, docs):
                    for dtype in (torch.float64, torch.bfloat16):
                        failures += check_case(strategy="hybrid", layout=layout, causal=causal,
                                               dtype=dtype, group=mesh, full=full, rank=rank,
                                               world=world, cu_seqlens=cu,
                                               label=f"mesh{shape} hq{hq}/hkv{hkv} docs={cu}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("shape", [(2, 2), (1, 2), (2, 1), (1, 3), (3, 1)])
def test_hybrid_mesh(spawn, shape):
    spawn(_hybrid, shape[0] * shape[1], shape)


def test_hybrid_hand_built_mesh_other_order(spawn):
    """A hand-built ("ulysses", "ring") mesh stays exact when shard/unshard get group=mesh."""
    spawn(_hybrid, 4, (2, 2), True)


def _documents(rank, world):
    failures = []
    length = 8 * world
    full = make_problem(5, b=1, hq=4, hkv=2, length=length, d=8)
    # shorter than a shard, longer than a shard, crossing shard borders, empty docs
    cases = [[0, 3, 4, 5 + 8, length - 2, length], [0, length], [0, 1, 1, length],
             [0, 8 * world // 2 + 3, length]]
    for bounds in cases:
        cu = torch.tensor(bounds, dtype=torch.int32)
        for strategy in ONE_D_STRATEGIES:
            if strategy == "ulysses" and 4 % world:
                continue
            for layout in LAYOUTS:
                for causal in (False, True):
                    failures += check_case(strategy=strategy, layout=layout, causal=causal,
                                           dtype=torch.float64, group=None, full=full,
                                           rank=rank, world=world, cu_seqlens=cu,
                                           label=f"docs{bounds}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_packed_documents(spawn, world):
    spawn(_documents, world)


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


def test_hybrid_needs_2d_mesh():
    x = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="2-D DeviceMesh"):
        seqpar.attention(x, x, x, strategy="hybrid")


def _padding(rank, world):
    """Padded run == unpadded run: outputs at real tokens and input gradients."""
    length = 4 * world + 3  # no layout splits this
    for layout in LAYOUTS:
        for causal in (False, True):
            q, k, v, dout = make_problem(3, b=1, hq=2, hkv=2, length=length, d=8)
            ref = dense_reference(q, k, v, dout, causal)
            padded = [seqpar.pad_for_layout(t, dim=2, layout=layout)[0] for t in (q, k, v)]
            dpad, n_pad = seqpar.pad_for_layout(dout, dim=2, layout=layout)  # zeros: inert
            plen = length + n_pad
            cu = seqpar.pad_cu_seqlens(None, length, plen)
            local = [seqpar.shard(t, dim=2, layout=layout).requires_grad_() for t in padded]
            out = seqpar.attention(*local, strategy="ring", causal=causal, layout=layout,
                                   cu_seqlens=cu)
            out.backward(seqpar.shard(dpad, dim=2, layout=layout))
            got = [seqpar.unshard(t, dim=2, layout=layout)[:, :, :length]
                   for t in (out.detach(), local[0].grad, local[1].grad, local[2].grad)]
            for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
                assert rel_err(g, r) <= TOL[torch.float64], (layout, causal, name)


def test_padding(spawn):
    spawn(_padding, 3)


def test_padding_labels_do_not_change_loss():
    logits = torch.randn(1, 10, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (1, 10))
    plogits, _ = seqpar.pad_for_layout(logits, dim=1, world=4, layout="zigzag")
    plabels, n = seqpar.pad_for_layout(labels, dim=1, world=4, layout="zigzag",
                                       value=seqpar.IGNORE_INDEX)
    assert n == 6 and plabels.shape[1] == 16
    a = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    b = F.cross_entropy(plogits.flatten(0, 1), plabels.flatten(), ignore_index=-100)
    assert torch.allclose(a, b)


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
