"""Rank agreement for the benchmarks: decisions every rank must take the same way.

Every decision that changes what ranks do next (skip a variant, out of time, a
failure on one rank) goes through a collective here, because a rank that
decides differently would hang the rest. Each helper is one small collective on
the benchmark's group (``Dist.group``), so it is also a barrier.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..comm.compat import all_gather_flat
from .launch import Dist


def _small(d: Dist, values: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
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
