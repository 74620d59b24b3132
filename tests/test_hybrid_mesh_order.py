"""Issue 10/11: the hybrid mesh puts Ulysses on adjacent ranks, and its sequence slices
follow global rank order, so a default-group shard is the hybrid shard (any mesh order)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from parity import check_case, make_problem
from torch.distributed.device_mesh import init_device_mesh

import seqpar
from seqpar.comm import hybrid_groups, hybrid_slices

LAYOUTS = ["contiguous", "zigzag", "striped"]


def _mesh_order(rank, world):
    mesh = seqpar.hybrid_mesh(2, 2, "cpu")
    ug, rg = hybrid_groups(mesh)
    assert dist.get_process_group_ranks(ug) == ([0, 1] if rank < 2 else [2, 3])
    assert dist.get_process_group_ranks(rg) == ([0, 2] if rank % 2 == 0 else [1, 3])
    assert hybrid_slices(mesh) == [[0, 1], [2, 3]]
    hand = init_device_mesh("cpu", (2, 2), mesh_dim_names=("ulysses", "ring"))
    assert dist.get_process_group_ranks(hybrid_groups(hand)[0]) == [rank % 2, rank % 2 + 2]
    assert hybrid_slices(hand) == [[0, 2], [1, 3]]  # slice = global rank, any order
    x = torch.arange(2 * 3 * 16, dtype=torch.float64).reshape(2, 3, 16)
    failures = []
    for m in (mesh, hand):
        for layout in LAYOUTS:
            mine = seqpar.shard(x, dim=2, group=m, layout=layout)
            assert torch.equal(mine, seqpar.shard(x, dim=2, layout=layout)), layout
            assert torch.equal(seqpar.unshard(mine, dim=2, group=m, layout=layout), x)
            assert torch.equal(seqpar.unshard(mine, dim=2, layout=layout), x)
        full = make_problem(3, b=2, hq=4, hkv=2, length=16, d=8)
        for layout in LAYOUTS:
            for causal in (False, True):
                for sg in (m, None):  # shard with the mesh or with the default group
                    failures += check_case(strategy="hybrid", layout=layout, causal=causal,
                                           dtype=torch.float64, group=m, full=full, rank=rank,
                                           world=world, shard_group=sg,
                                           label=f"dims={m.mesh_dim_names} shard={sg}")
    assert not failures, "\n".join(failures)


def test_hybrid_mesh_ulysses_adjacent_and_exact(spawn):
    spawn(_mesh_order, 4)
