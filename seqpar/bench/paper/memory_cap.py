"""A per-GPU memory cap, so "max batch until out of memory" means what it meant on
the paper's 16 GB P100s, on any device.

On CUDA the cap is the caching allocator's per-process memory fraction
(``torch.cuda.set_per_process_memory_fraction``): an allocation beyond it raises
the ordinary ``torch.OutOfMemoryError``. A CPU has no allocator limit, so there the
cap is *simulated*: a trial measures its peak of live tensor bytes
(:class:`~seqpar.memory.measure.LivePeak`) and :meth:`MemoryCap.check` raises
:class:`CapExceeded` when it is above the cap. A simulated trial therefore runs to
the end before it "fails"; only the decision is the same as on a GPU.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

GIB = 2**30


class CapExceeded(RuntimeError):
    """A CPU trial's measured peak is above the simulated cap (a simulated OOM)."""


def is_oom(exc: BaseException) -> bool:
    """True for a real CUDA OOM, a simulated one, or an allocator "out of memory" error."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return (isinstance(exc, (CapExceeded, oom)) if oom else isinstance(exc, CapExceeded)) \
        or "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    """Give back what a failed trial held: tracebacks keep frames that keep tensors."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def device_total_bytes(device: torch.device) -> int | None:
    """The device's memory (None on CPU: no meaningful total)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


@dataclass
class MemoryCap:
    """``gib``: the per-GPU cap in GiB (None: the whole device, no cap on CPU)."""

    gib: float | None
    device: torch.device

    def __post_init__(self) -> None:
        if self.gib is not None and not self.gib > 0:
            raise ValueError(f"--gpu-memory-gib must be positive, got {self.gib}")

    @property
    def cap_bytes(self) -> int | None:
        return None if self.gib is None else int(self.gib * GIB)

    @property
    def simulated(self) -> bool:
        return self.device.type != "cuda"

    def apply(self) -> None:
        """Set the allocator fraction on CUDA; raise if the cap exceeds the device."""
        total = device_total_bytes(self.device)
        if total is None or self.cap_bytes is None:
            return
        if self.cap_bytes > total:
            raise ValueError(f"--gpu-memory-gib {self.gib:g} is larger than this GPU's "
                             f"{total / GIB:.1f} GiB")
        torch.cuda.set_per_process_memory_fraction(self.cap_bytes / total, self.device)

    def check(self, peak_bytes: int) -> None:
        """Simulated cap: raise :class:`CapExceeded` when ``peak_bytes`` is above it."""
        if self.simulated and self.cap_bytes is not None and peak_bytes > self.cap_bytes:
            raise CapExceeded(f"simulated out of memory: peak {peak_bytes / GIB:.4f} GiB > "
                              f"cap {self.gib:g} GiB")

    def describe(self) -> str:
        if self.gib is None:
            return "no cap" if self.simulated else "whole device"
        return f"{self.gib:g} GiB per device" + (" (simulated on CPU)" if self.simulated else "")


class PeakBox:
    """Holds the peak bytes a :func:`track_peak` region measured."""

    peak: int = 0


@contextmanager
def track_peak(device: torch.device) -> Iterator[PeakBox]:
    """Peak bytes of the region: the CUDA allocator's peak, or on CPU the peak of
    live tensor bytes created inside it (parameters built inside count too)."""
    box = PeakBox()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        torch.cuda.synchronize(device)
        box.peak = torch.cuda.max_memory_allocated(device)
        return
    from ...memory.measure import LivePeak

    # no cyclic GC inside: when it runs would change which garbage is still alive at the
    # peak, so the same trial could measure differently (objects freed by refcount only)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with LivePeak() as live:
            yield box
    finally:
        if enabled:
            gc.enable()
    box.peak = live.peak
