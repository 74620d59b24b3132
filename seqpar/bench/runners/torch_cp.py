"""The peer: PyTorch's ``context_parallel`` (ring attention on SDPA shards).

``torch.distributed.tensor.experimental.context_parallel`` is the strongest
peer we know (issue 5): it monkey-patches ``F.scaled_dot_product_attention`` so
that inside the context SDPA on sequence shards runs ring attention with either
an all-gather or an all-to-all KV rotation (``set_rotate_method``), on whichever
SDPA kernel ``sdpa_kernel`` selects (cuDNN or flash). We drive it the way its
own tests do (test/distributed/tensor/test_attention.py), except that q/k/v are
never handed to it as ``buffers``: those are sharded with ``resize_``, which
keeps the full-length storage alive and would inflate its peak memory. Instead
one int64 buffer of positions goes through it; what comes back is exactly the
global positions this rank owns (its head-tail load balancing for causal), and
q/k/v shards are cut at those positions. Everything version-specific is
guarded: the GPU images run torch 2.11, CI runs 2.13.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NoReturn

import torch

from ..options import names
from ..problem import Problem, Variant
from ..sdpa import SDPA_BACKENDS, SdpaStep, check_backends, sdpa_backend
from .base import Built, RunContext, Runner

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

ROTATE_METHODS = ("allgather", "alltoall")
DEFAULT_BACKENDS = {"cuda": "cudnn,flash", "cpu": "default"}


def context_parallel_available() -> str | None:
    """None if torch has context_parallel and set_rotate_method, else why not."""
    try:
        from torch.distributed.tensor.experimental import context_parallel  # noqa: F401
        from torch.distributed.tensor.experimental._attention import (  # noqa: F401
            set_rotate_method,
        )
    except ImportError as exc:
        return f"torch {torch.__version__} lacks context_parallel/set_rotate_method: {exc}"
    return None


def _cp_options() -> object | None:
    try:
        from torch.distributed.tensor.experimental._attention import _cp_options
    except ImportError:
        return None
    return _cp_options


@contextlib.contextmanager
def torch_context_parallel(mesh: DeviceMesh, length: int, rotate: str,
                           device: torch.device) -> Iterator[torch.Tensor]:
    """Enter PyTorch context parallelism over ``mesh`` for sequences of ``length``.

    Yields the global positions (int64, ``(L/P,)``) of the tokens this rank
    must hold; q/k/v passed to SDPA inside must be those tokens. Restores the
    global rotate method on exit (it is module state in torch).
    """
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    options = _cp_options()
    old_rotate = getattr(options, "rotate_method", None)
    set_rotate_method(rotate)
    positions = torch.arange(length, device=device)
    try:
        with context_parallel(mesh, buffers=[positions], buffer_seq_dims=[0],
                              no_restore_buffers={positions}):
            # positions was resized in place to this rank's shard
            yield positions.clone()
    finally:
        if options is not None and old_rotate is not None:
            options.rotate_method = old_rotate


def make_mesh(device: torch.device, world: int) -> DeviceMesh:
    """A 1-D DeviceMesh over the default group (what context_parallel wants)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,))


class TorchContextParallel(Runner):
    """``torch-cp/<backend>/<rotate>``: context_parallel on one SDPA backend."""

    name = "torch-cp"
    kind = "peer"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, device: str) -> None:
        parser.add_argument("--peer-backends", type=names, default=DEFAULT_BACKENDS[device],
                            help=f"SDPA backends for the peer, from {SDPA_BACKENDS}")
        parser.add_argument("--rotate-methods", type=names, default=",".join(ROTATE_METHODS))
        parser.add_argument("--peer-on-cpu", action="store_true",
                            help="try the peer on CPU anyway (torch 2.13: ~1 min of DTensor "
                                 "sharding propagation per call, then NotImplementedError)")

    @classmethod
    def check_arguments(cls, args: argparse.Namespace,
                        error: Callable[[str], NoReturn]) -> None:
        check_backends(args.peer_backends, error)
        for name in args.rotate_methods:
            if name not in ROTATE_METHODS:
                error(f"unknown rotate method {name!r}; choose from {ROTATE_METHODS}")

    @classmethod
    def variants(cls, args: argparse.Namespace, world: int) -> tuple[list[Variant],
                                                                      list[Variant]]:
        if args.no_peer:
            return [], []
        first, later = [], []
        for i, backend in enumerate(args.peer_backends):
            for rotate in args.rotate_methods:
                (first if i == 0 else later).append(
                    Variant("peer", f"torch-cp/{backend}/{rotate}", backend=backend,
                            rotate=rotate, runner=cls.name))
        return first, later

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        self.mesh = None  # 1-D DeviceMesh

    def prepare(self) -> None:
        args, d = self.ctx.args, self.ctx.d
        if not args.no_peer and context_parallel_available() is None and (
                d.cuda or args.peer_on_cpu):
            try:
                self.mesh = make_mesh(d.device, d.world)
            except Exception as exc:  # noqa: BLE001 - the peer rows record why
                self.ctx.say(f"no device mesh for the peer: {exc}")

    def skip(self, p: Problem, v: Variant) -> tuple[str, str] | None:
        if not self.ctx.d.cuda and not self.ctx.args.peer_on_cpu:
            return ("unsupported", "torch context_parallel handles only the CUDA SDPA ops "
                    "(flash/efficient/cuDNN); on CPU SDPA is "
                    "aten._scaled_dot_product_flash_attention_for_cpu, which has no CP rule "
                    "(torch 2.13: causal raises NotImplementedError, full spends ~1 min in "
                    "DTensor sharding propagation, then the backward raises); --peer-on-cpu "
                    "tries anyway")
        return None

    def setup(self, p: Problem, v: Variant) -> Built:
        why = context_parallel_available()
        if why:
            raise NotImplementedError(why)
        if self.mesh is None:
            raise RuntimeError("device mesh for context_parallel was not created")
        stack = contextlib.ExitStack()
        try:
            positions = stack.enter_context(
                torch_context_parallel(self.mesh, p.length, v.rotate, self.ctx.d.device))
            stack.enter_context(sdpa_backend(v.backend))
            q, k, v_, dout = self.ctx.inputs(p, positions)
            step = SdpaStep(*(t.requires_grad_() for t in (q, k, v_)), dout, p.causal)
        except BaseException:
            stack.close()
            raise
        return Built(probe=step.probe, step=step, positions=positions, stack=stack,
                     notes=lambda: {"gqa": step.gqa})
