"""Process groups and rank agreement for the benchmarks.

Benchmarks run under ``torchrun`` (RANK/WORLD_SIZE in the environment; NCCL on
GPUs) or, without it, spawn their own ranks (gloo on CPU, NCCL on GPUs) so one
command works on a laptop and in CI; both go through the shared launcher
(:mod:`seqpar.launch`), which only gains a short default timeout here and the
:class:`Dist` record. Every decision that changes what ranks do
next (skip a variant, out of time, a failure on one rank) goes through a
collective here, because a rank that decides differently would hang the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .. import launch as _launch
from ..comm.compat import all_gather_flat

#: launched by torchrun (or anything setting RANK/WORLD_SIZE)
under_torchrun = _launch.under_launcher


@dataclass
class Dist:
    """This process's place in the benchmark's process group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def group(self) -> dist.ProcessGroup:
        return dist.group.WORLD


def init_from_env(timeout_s: float = 180.0) -> Dist:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_*; NCCL if CUDA is there.

    The timeout is short on purpose: a rank stuck in a collective (e.g. a peer
    that died on an error the others did not see) should fail the run within
    minutes, not hold a GPU machine for the default 10.
    """
    device = _launch.init_from_env(timedelta(seconds=timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return Dist(rank, world, local_rank, device, dist.get_backend())


def spawn(fn: Callable[..., int], nproc: int, *args, grace_s: float = 60.0,
          prog: str = "seqpar bench") -> int:
    """Run ``fn(*args)`` on ``nproc`` fresh ranks (env set up as torchrun would);
    returns the exit code. Once one rank fails, the others get ``grace_s`` to
    notice (their collectives time out) before they are killed."""
    return _launch.spawn(fn, nproc, *args, prog=prog, failure_grace_s=grace_s).code


# ---------------------------------------------------------------- agreement between ranks

def _small(d: Dist, values: list[float], dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=d.device)


def all_max(d: Dist, values: list[float]) -> list[float]:
    """Elementwise max over ranks (also a barrier)."""
    t = _small(d, values)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.group)
    return t.tolist()


def any_rank(d: Dist, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    return all_max(d, [1.0 if flag else 0.0])[0] > 0


def from_rank0(d: Dist, flag: bool) -> bool:
    """Rank 0's decision, on every rank (clocks differ: only rank 0's may decide)."""
    return any_rank(d, flag if d.rank == 0 else False)


def gather_rows(d: Dist, values: list[float]) -> list[list[float]]:
    """Every rank's ``values`` (same length everywhere), indexed by rank."""
    t = _small(d, values)
    out = torch.empty(d.world * t.numel(), dtype=t.dtype, device=d.device)
    all_gather_flat(out, t, group=d.group)
    return out.view(d.world, -1).tolist()


def agree_outcome(d: Dist, status: str, reason: str) -> tuple[str, str]:
    """The worst (status, reason) over ranks; ("ok", "") only if every rank is ok."""
    if not any_rank(d, status != "ok"):
        return "ok", ""
    outcomes: list = [None] * d.world
    dist.all_gather_object(outcomes, (status, reason), group=d.group)
    for rank, (s, r) in enumerate(outcomes):
        if s != "ok":
            return s, f"rank {rank}: {r}"
    return "ok", ""
