"""Process groups for the benchmarks (rank agreement lives in :mod:`.agree`).

Benchmarks run under ``torchrun`` (RANK/WORLD_SIZE in the environment; NCCL on
GPUs) or, without it, spawn their own ranks (gloo on CPU, NCCL on GPUs) so one
command works on a laptop and in CI; both go through the shared launcher
(:mod:`seqpar.launch`), which only gains a short default timeout here and the
:class:`Dist` record.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .. import launch as _launch

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

