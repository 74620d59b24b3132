"""The tp plan is declared by layer types: a model whose TP layers have other names
still syncs, clips, gathers and checkpoints its gradients and weights correctly."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from seqpar.parallel import (
    ColumnParallelLinear,
    ParallelDims,
    Parallelized,
    RowParallelLinear,
    clip_grad_norm,
    sync_gradients,
    tp_plan,
)
from seqpar.train.checkpoint import load_checkpoint, save_checkpoint

B, L, D_IN, HIDDEN = 2, 8, 6, 12


class Toy(nn.Module):
    """TP-SP MLP under names no suffix rule knows, plus a replicated scale."""

    def __init__(self, up: nn.Module, down: nn.Module):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, D_IN, dtype=torch.float64))
        self.expand = up
        self.squeeze = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.squeeze(F.gelu(self.expand(x * self.scale)))


def _dense() -> tuple[Toy, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    up = nn.Linear(D_IN, HIDDEN, bias=False).double()
    down = nn.Linear(HIDDEN, D_IN, bias=False).double()
    with torch.no_grad():
        up.weight.copy_(torch.randn(HIDDEN, D_IN, generator=g, dtype=torch.float64))
        down.weight.copy_(torch.randn(D_IN, HIDDEN, generator=g, dtype=torch.float64))
    x = torch.randn(B, L, D_IN, generator=g, dtype=torch.float64)
    dy = torch.randn(B, L, D_IN, generator=g, dtype=torch.float64)
    return Toy(up, down), x, dy


def _plan_sync_clip_checkpoint(rank, world, root):
    failures = []
    dense, x, dy = _dense()
    (dense(x) * dy).sum().backward()
    want = {n: p.grad.clone() for n, p in dense.named_parameters()}
    dense_norm = torch.sqrt(sum(g.pow(2).sum() for g in want.values())).item()

    group = dist.group.WORLD
    up = ColumnParallelLinear.from_linear(dense.expand, group, gather_input=True)
    down = RowParallelLinear.from_linear(dense.squeeze, group, sequence_parallel=True)
    model = Toy(up, down)
    plan = tp_plan(model)
    if plan != {"expand.weight": 0, "squeeze.weight": 1}:
        failures.append(f"plan {plan}")
    dims = ParallelDims(dp=1, sp=1, tp=world)
    par = Parallelized(model=model, dims=dims, mesh=dims.build_mesh("cpu"), tp_plan=plan)
    # (B, L, D) -> (B, L/tp, D): this rank's sequence chunk (TP-SP)
    (model(x.chunk(world, 1)[rank]) * dy.chunk(world, 1)[rank]).sum().backward()
    sync_gradients(par)
    for name, got in par.full_gradients().items():
        err = ((got - want[name]).norm() / want[name].norm()).item()
        if not err < 1e-12:
            failures.append(f"grad {name} rel err {err:.3g}")
    norm = clip_grad_norm(par, max_norm=dense_norm / 2)
    if abs(norm - dense_norm) > 1e-9 * dense_norm:
        failures.append(f"norm {norm} != dense {dense_norm}")
    clipped = par.full_gradients()
    for name, got in clipped.items():
        ref = want[name] * (dense_norm / 2) / (dense_norm + 1e-6)
        if not torch.allclose(got, ref, rtol=1e-10, atol=0):
            failures.append(f"clipped grad {name} wrong")

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    optimizer.step()
    weights = {n: par.full_tensor(n, p) for n, p in model.named_parameters()}
    path = save_checkpoint(Path(root), 1, par, optimizer)
    # onto the same split, from zeroed weights
    fresh_up = ColumnParallelLinear(torch.zeros_like(up.weight), group, gather_input=True)
    fresh_down = RowParallelLinear(torch.zeros_like(down.weight), group)
    fresh = Toy(fresh_up, fresh_down)
    fresh_par = Parallelized(model=fresh, dims=dims, mesh=par.mesh, tp_plan=tp_plan(fresh))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    if load_checkpoint(path, fresh_par, fresh_opt) != 1:
        failures.append("step not restored")
    for name, p in fresh.named_parameters():
        if not torch.equal(fresh_par.full_tensor(name, p), weights[name]):
            failures.append(f"tp reload of {name} differs")
    # onto dense (unsharded) weights: the checkpoint holds the global tensors
    dense_again, _, _ = _dense()
    rep_dims = ParallelDims(dp=1, sp=world, tp=1)
    rep = Parallelized(model=dense_again, dims=rep_dims, mesh=rep_dims.build_mesh("cpu"))
    load_checkpoint(path, rep, torch.optim.AdamW(dense_again.parameters(), lr=0.1))
    for name, p in dense_again.named_parameters():
        if not torch.equal(p.detach(), weights[name]):
            failures.append(f"dense reload of {name} differs")
    assert not failures, f"rank {rank}: " + "\n".join(failures)


def test_tp_plan_comes_from_layer_types_not_names(spawn, tmp_path):
    spawn(_plan_sync_clip_checkpoint, 2, str(tmp_path))
