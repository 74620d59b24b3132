"""The one launcher: start ranks, join a group, leave it, report failures.

``seqpar demo``, ``seqpar train``, ``seqpar bench`` and the test harness
(``tests/distributed.py``) all start processes through here, so they share one
timeout policy (``seqpar.comm.DEFAULT_TIMEOUT`` unless told), one CPU thread
rule (:func:`cpu_threads`), one failure report (one line naming the first
failing rank and its log file) and one signal policy (SIGTERM/SIGINT reach
every rank; a second one kills them):

* under a launcher (``RANK`` and ``WORLD_SIZE`` set, e.g. torchrun): join its
  group with :func:`init_from_env`, NCCL on GPUs and gloo otherwise;
* otherwise :func:`spawn` ``nproc`` local ranks that do the same.

:func:`run` does either for a function of the device.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from .group import cpu_threads, free_port, init_from_env, leaving_group_after, under_launcher
from .spawn import FAILURE_GRACE_S, SIGNAL_GRACE_S, Failure, Outcome, run_here, spawn

__all__ = ["FAILURE_GRACE_S", "SIGNAL_GRACE_S", "Failure", "Outcome", "cpu_threads",
           "free_port", "in_group", "init_from_env", "leaving_group_after", "run", "run_here",
           "spawn", "under_launcher"]


def in_group(fn: Callable[..., int | None], args: tuple, timeout: timedelta | None = None,
             backend: str | None = None) -> int:
    """Join the group from the environment, run ``fn(device, *args)``, leave the group."""
    device = init_from_env(timeout, backend)
    with leaving_group_after():
        return int(fn(device, *args) or 0)


def run(fn: Callable[..., int | None], nproc: int, *args, prog: str = "seqpar",
        timeout: timedelta | None = None, backend: str | None = None, **spawn_kw) -> int:
    """Run ``fn(device, *args)`` on every rank of a group: the launcher's when under
    one, else ``nproc`` spawned ranks. Returns the exit code (0: every rank ok)."""
    if under_launcher():
        return in_group(fn, args, timeout, backend)
    return spawn(in_group, nproc, fn, args, timeout, backend, prog=prog, **spawn_kw).code
