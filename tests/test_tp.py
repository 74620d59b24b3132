"""Megatron TP and TP-SP layers against a dense float64 reference (outputs and grads),
and the bytes they move."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from seqpar.comm import count_bytes
from seqpar.comm.tensor_parallel import copy_to_tp
from seqpar.parallel import ColumnParallelLinear, RowParallelLinear

B, L, D_IN, HIDDEN = 2, 12, 8, 16


def _dense(seed):
    g = torch.Generator().manual_seed(seed)
    lin1 = nn.Linear(D_IN, HIDDEN, bias=False).double()
    lin2 = nn.Linear(HIDDEN, D_IN, bias=False).double()
    with torch.no_grad():
        lin1.weight.copy_(torch.randn(HIDDEN, D_IN, generator=g, dtype=torch.float64))
        lin2.weight.copy_(torch.randn(D_IN, HIDDEN, generator=g, dtype=torch.float64))
    x = torch.randn(B, L, D_IN, generator=g, dtype=torch.float64)
    dy = torch.randn(B, L, D_IN, generator=g, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    y = lin2(F.gelu(lin1(xr)))
    y.backward(dy)
    return lin1, lin2, x, dy, y.detach(), xr.grad


def _close(name, got, want, failures):
    err = ((got - want).norm() / want.norm()).item()
    if not err < 1e-12:
        failures.append(f"rank {dist.get_rank()}: {name} rel err {err:.3g}")


def _tp_layers(rank, world):
    group = dist.group.WORLD
    failures = []
    lin1, lin2, x, dy, y_ref, dx_ref = _dense(seed=7)
    rows1 = lin1.weight.grad.chunk(world, 0)[rank]
    cols2 = lin2.weight.grad.chunk(world, 1)[rank]

    # TP-SP: sequence-sharded in, sequence-sharded out
    col = ColumnParallelLinear.from_linear(lin1, group, gather_input=True)
    row = RowParallelLinear.from_linear(lin2, group, sequence_parallel=True)
    x_loc = x.chunk(world, 1)[rank].clone().requires_grad_()
    with count_bytes() as c:
        y_loc = row(F.gelu(col(x_loc)))
        y_loc.backward(dy.chunk(world, 1)[rank])
    _close("tp-sp out", y_loc.detach(), y_ref.chunk(world, 1)[rank], failures)
    _close("tp-sp dx", x_loc.grad, dx_ref.chunk(world, 1)[rank], failures)
    _close("tp-sp dW column", col.weight.grad, rows1, failures)
    _close("tp-sp dW row", row.weight.grad, cols2, failures)
    # forward: 1 all-gather of x + 1 reduce-scatter of y; backward: the mirror images
    shard_bytes = B * (L // world) * D_IN * 8
    want = {"all_gather": 2 * (world - 1) * shard_bytes,
            "reduce_scatter": 2 * (world - 1) * shard_bytes}
    if dict(c.bytes_by_kind) != want:
        failures.append(f"tp-sp bytes {dict(c.bytes_by_kind)} != {want}")

    # plain TP: replicated in, replicated out (f = copy, g = all-reduce)
    col = ColumnParallelLinear.from_linear(lin1, group)
    row = RowParallelLinear.from_linear(lin2, group, sequence_parallel=False)
    x_rep = x.clone().requires_grad_()
    y = row(F.gelu(col(copy_to_tp(x_rep, group))))
    y.backward(dy)
    _close("tp out", y.detach(), y_ref, failures)
    _close("tp dx", x_rep.grad, dx_ref, failures)
    _close("tp dW column", col.weight.grad, rows1, failures)
    _close("tp dW row", row.weight.grad, cols2, failures)
    assert not failures, "\n".join(failures)


def test_tp_layers_match_dense(spawn):
    spawn(_tp_layers, 2)
