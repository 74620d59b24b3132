"""Process groups and rank agreement for the benchmarks.

Benchmarks run under ``torchrun`` (RANK/WORLD_SIZE in the environment; NCCL on
GPUs) or, without it, spawn their own ranks (gloo on CPU, NCCL on GPUs) so one
command works on a laptop and in CI. Every decision that changes what ranks do
next (skip a variant, out of time, a failure on one rank) goes through a
collective here, because a rank that decides differently would hang the rest.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..launch import free_port, under_launcher

under_torchrun = under_launcher  # launched by torchrun (or anything setting RANK/WORLD_SIZE)


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
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    kwargs: dict = {}
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
        kwargs["device_id"] = device
    else:
        device, backend = torch.device("cpu"), "gloo"
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        torch.set_num_threads(threads)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    except TypeError:  # a torch without device_id
        kwargs.pop("device_id", None)
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return Dist(rank, world, local_rank, device, backend)


def _child(rank: int, world: int, port: int, fn: Callable[..., int], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    try:
        code = int(fn(*args) or 0)
    except BaseException:  # noqa: BLE001 - report any failure with its rank, then exit non-zero
        print(f"[rank {rank}] failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        code = 1
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown (NCCL/gloo atexit hooks can block)


def spawn(fn: Callable[..., int], nproc: int, *args, grace_s: float = 60.0) -> int:
    """Run ``fn(*args)`` on ``nproc`` fresh ranks (env set up as torchrun would).

    Returns the worst exit code. Once one rank fails, the others get ``grace_s``
    to notice (their collectives time out) before they are terminated.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, nproc, port, fn, args)) for r in range(nproc)]
    for p in procs:
        p.start()
    failed_at = None
    while any(p.is_alive() for p in procs):
        time.sleep(0.2)
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            break
    for p in procs:
        p.join(10)
    codes = [p.exitcode for p in procs]
    return 0 if all(c == 0 for c in codes) else max(abs(c or 1) for c in codes)

