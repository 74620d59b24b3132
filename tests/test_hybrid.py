"""Hybrid Ulysses x ring: meshes of every shape (hybrid_mesh and a hand-built one in the
other order), and the 2-D mesh it needs."""

from __future__ import annotations

import pytest
import torch
from parity import check_case, make_problem
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


def test_hybrid_needs_2d_mesh():
    x = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="2-D DeviceMesh"):
        seqpar.attention(x, x, x, strategy="hybrid")
