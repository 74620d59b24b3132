"""Starting a process group: under torchrun, or by spawning local CPU processes.

The CLI commands share this so they behave alike: under a launcher (``RANK`` and
``WORLD_SIZE`` in the environment) they join its group, NCCL on GPUs and gloo
otherwise; on their own they spawn ``nproc`` local gloo processes. Groups get a
timeout so a mismatch fails loudly instead of hanging.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .comm import DEFAULT_TIMEOUT


def under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port() -> int:
    """A free local TCP port for a spawned group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_from_env(timeout: timedelta = DEFAULT_TIMEOUT) -> torch.device:
    """Join the launcher's group; returns this rank's device."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
        return device
    dist.init_process_group("gloo", timeout=timeout)
    return torch.device("cpu")


@contextmanager
def leaving_group_after() -> Iterator[None]:
    """Run the body, then leave the default process group.

    After a clean run every rank meets at a barrier first: a gloo rank that tears
    its group down while a peer's last message is still in flight aborts the
    process at exit ("terminate called without an active exception", seen in
    about 1 in 3 short runs with a checkpoint save). After a failure the barrier
    is skipped, since the other ranks may never reach it.
    """
    try:
        yield
    except BaseException:
        with suppress(Exception):
            dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()


def _spawned(rank: int, world: int, port: int, fn: Callable, args: tuple, threads: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=DEFAULT_TIMEOUT)
    try:
        with leaving_group_after():
            fn(torch.device("cpu"), *args)
    except BaseException:
        traceback.print_exc()
        raise


def run(fn: Callable[..., None], nproc: int, *args) -> None:
    """Run ``fn(device, *args)`` on every rank: the launcher's, or ``nproc`` spawned ones."""
    if under_launcher():
        device = init_from_env()
        with leaving_group_after():
            fn(device, *args)
        return
    threads = max(1, (os.cpu_count() or 1) // nproc)
    mp.start_processes(_spawned, args=(nproc, free_port(), fn, args, threads), nprocs=nproc,
                       start_method="spawn")
