"""Activation-checkpoint offload: a checkpointed block's input lives in host memory.

With full activation checkpointing each block keeps only its input ``(L_local, d)``
until backward: at 8B in bf16 that is 32 layers x 8 KiB = 256 KiB per local token,
64 GiB at 256K local tokens, and it grows with the sequence while the parameter
and optimizer states do not. :class:`ActivationOffload` moves those inputs to
(pinned) host memory during forward and brings each back just before its block's
backward needs it.

How the input is caught. Non-reentrant ``torch.utils.checkpoint`` saves the
checkpointed function's tensor inputs as saved tensors *before* it installs its
own saved-tensor hooks, and the block's inner saves go to those inner hooks. So
``with offload.hooks(): checkpoint(block, x, rope)`` sees exactly the block's
inputs and nothing else; tensors that do not need a gradient (the RoPE tables,
shared by every layer) and small ones stay where they are.

Why not ``torch.autograd.graph.save_on_cpu``: it copies on the compute stream
(forward waits for every device-to-host copy) and copies back at unpack time on
the compute stream (backward waits for every host-to-device copy). Here:

* pack: the copy runs on a side stream after an event from the compute stream;
  the device tensor is handed to the allocator with ``record_stream`` so its
  memory is reused only after the copy, and forward continues at once;
* unpack (block i's recompute starts): waits for block i's prefetched copy, then
  starts the copy of the block packed before it (block i-1, the next one backward
  needs) on the side stream, overlapped with block i's backward.

On CPU the same hooks and bookkeeping run, the "host copy" being a separate CPU
buffer (a clone), so tests exercise the logic; ``stats`` counts what moved.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch


@dataclass
class OffloadStats:
    """What went through the hooks (bytes of offloaded tensors; counts of calls)."""

    packed: int = 0
    packed_bytes: int = 0
    kept: int = 0  # saved tensors left in place (no grad needed, or small)
    unpacked: int = 0
    prefetched: int = 0


class _Entry:
    """One offloaded tensor: its host copy, and its device copy once fetched back."""

    def __init__(self, owner: ActivationOffload, host: torch.Tensor, device: torch.device,
                 prev: _Entry | None):
        self.owner = owner
        self.host = host
        self.device = device
        self.prev = None if prev is None else weakref.ref(prev)
        self.fetched: torch.Tensor | None = None
        self.ready: object | None = None  # a CUDA event after the prefetch

    def prefetch(self) -> None:
        """Start the copy back (side stream on CUDA); idempotent."""
        if self.fetched is not None:
            return
        side = self.owner.side_stream
        if side is None:  # CPU: a separate buffer back
            self.fetched = self.host.clone()
            return
        with torch.cuda.stream(side):
            self.fetched = self.host.to(self.device, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record(side)

    def take(self) -> torch.Tensor:
        """The device tensor, usable on the current stream."""
        self.prefetch()
        t, self.fetched = self.fetched, None
        if self.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(self.ready)
            t.record_stream(current)  # allocated on the side stream, used here
            self.ready = None
        return t  # autograd restores requires_grad and grad_fn of the saved tensor


class ActivationOffload:
    """Saved-tensor hooks that keep large, gradient-carrying saved tensors on the host.

    ``with offload.hooks(): out = checkpoint(fn, x, ...)`` offloads ``fn``'s
    checkpointed inputs (see the module doc). One object serves every offloaded
    block of a model (it links entries in pack order to prefetch the next one).
    ``min_bytes``: smaller tensors stay in place. ``pin_memory``: host buffers are
    pinned on CUDA (needed for asynchronous copies).
    """

    def __init__(self, *, min_bytes: int = 1 << 16, pin_memory: bool = True):
        self.min_bytes = min_bytes
        self.pin_memory = pin_memory
        self.stats = OffloadStats()
        self._last: weakref.ref | None = None
        self._side: dict[torch.device, object] = {}
        self.side_stream = None

    def _side_stream(self, device: torch.device):
        if device.type != "cuda":
            return None
        if device not in self._side:
            self._side[device] = torch.cuda.Stream(device)
        return self._side[device]

    def _pack(self, t: torch.Tensor):
        nbytes = t.numel() * t.element_size()
        if not t.requires_grad or nbytes < self.min_bytes or t.device.type == "meta":
            self.stats.kept += 1
            return t
        side = self._side_stream(t.device)
        self.side_stream = side
        if side is None:
            host = t.detach().clone()  # CPU: a buffer apart from the compute tensors
        else:
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu",
                               pin_memory=self.pin_memory)
            side.wait_stream(torch.cuda.current_stream(t.device))  # t is fully computed
            with torch.cuda.stream(side):
                host.copy_(t.detach(), non_blocking=True)
            t.record_stream(side)  # its memory is reused only after the copy
        prev = None if self._last is None else self._last()
        entry = _Entry(self, host, t.device, prev)
        self._last = weakref.ref(entry)
        self.stats.packed += 1
        self.stats.packed_bytes += nbytes
        return entry

    def _unpack(self, packed):
        if not isinstance(packed, _Entry):
            return packed
        self.stats.unpacked += 1
        t = packed.take()
        prev = None if packed.prev is None else packed.prev()
        if prev is not None and prev.fetched is None:
            prev.prefetch()  # the block backward needs next, overlapped with this one
            self.stats.prefetched += 1
        return t

    def hooks(self) -> contextlib.AbstractContextManager:
        """The saved-tensor hooks to run an offloaded block's checkpoint call under."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
