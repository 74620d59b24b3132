"""Spawning gloo process groups for tests, through the shared launcher (seqpar.launch).

``run_distributed(fn, world_size, *args)`` starts ``world_size`` ranks, runs
``fn(rank, world_size, *args)`` in each inside a joined gloo group, and re-raises
the first failure with its rank and traceback. A deadline turns any hang into a
failure.
"""

from __future__ import annotations

import torch.distributed as dist

from seqpar.launch import free_port, in_group, spawn

__all__ = ["free_port", "run_distributed"]


def _test_rank(device, fn, args) -> None:
    fn(dist.get_rank(), dist.get_world_size(), *args)


def run_distributed(fn, world_size: int, *args, timeout: float = 300.0) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; raise on failure."""
    out = spawn(in_group, world_size, _test_rank, (fn, args), None, "gloo", prog=None,
                deadline_s=timeout, failure_grace_s=5.0)
    if out.failures:
        first = out.failures[0]
        detail = first.log.read_text() if first.log else first.summary
        raise AssertionError(f"rank {first.rank} failed:\n{detail}")
    if out.hung:
        raise AssertionError(f"ranks {out.hung} still running after {timeout:.0f}s (hang)")
    if out.code != 0:
        raise AssertionError(f"ranks exited abnormally: exit code {out.code}")
