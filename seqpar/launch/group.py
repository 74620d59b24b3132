"""Joining and leaving a process group: the one place that picks backend, device,
timeout and CPU thread count, for spawned ranks and torchrun's alike."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

import torch
import torch.distributed as dist

from ..comm import DEFAULT_TIMEOUT


def under_launcher() -> bool:
    """True when a launcher (torchrun, or our own :func:`~seqpar.launch.spawn`) set
    ``RANK`` and ``WORLD_SIZE``: join its group instead of spawning."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port() -> int:
    """A free local TCP port for a spawned group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_threads(local_world: int) -> int:
    """The thread-count rule: the host's cores split evenly over the ranks on it
    (at least one each), so ``P`` CPU ranks do not oversubscribe the machine."""
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


def init_from_env(timeout: timedelta | None = None, backend: str | None = None) -> torch.device:
    """Join the group described by ``RANK``/``WORLD_SIZE``/``MASTER_*``; returns this
    rank's device.

    NCCL on the ``LOCAL_RANK``-th GPU when CUDA is there (and ``backend`` is not
    ``"gloo"``), else gloo on the CPU with :func:`cpu_threads` threads. The timeout
    (``seqpar.comm.DEFAULT_TIMEOUT`` unless told) turns a rank that stops answering
    into an error instead of a hang. Torch builds whose ``init_process_group`` has
    no ``device_id`` argument get the call without it.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    kwargs: dict = {}
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
        kwargs["device_id"] = device
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout, **kwargs)
    except TypeError:  # a torch without device_id
        kwargs.pop("device_id", None)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    return device


@contextmanager
def leaving_group_after() -> Iterator[None]:
    """Run the body, then leave the default process group.

    After a clean run every rank meets at a barrier first: a gloo rank that tears
    its group down while a peer's last message is still in flight aborts the
    process at exit ("terminate called without an active exception", seen in
    about 1 in 3 short runs with a checkpoint save). After a failure the barrier
    is skipped, since the other ranks may never reach it, and the time of the
    failure is noted on the exception (``seqpar_failed_at``): leaving makes the
    peers fail too, and the launcher must name the rank that failed first.
    """
    try:
        yield
    except BaseException as exc:
        with suppress(Exception):  # when it failed, before leaving makes the peers fail too
            exc.seqpar_failed_at = time.time()
        with suppress(Exception):
            dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()
