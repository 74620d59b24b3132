"""Peak memory of a region: the CUDA allocator's peak, or sampled RSS growth on CPU.

The benchmark only needs the CUDA numbers (``reset_peak`` before, ``peak_bytes``
after; neither synchronises, so they can sit right outside a timed region); the
demo also wants a CPU estimate, which ``PeakMemory`` samples from /proc.
"""

from __future__ import annotations

import os
import threading

import torch


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window on ``device`` (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    """Allocator peak on ``device`` since the last ``reset_peak``; None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device)


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a ``with`` region: CUDA allocator peak, or sampled RSS growth on CPU.

    ``peak`` is the absolute peak, ``used`` the growth over the start of the region.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak, self.base, self.used = device, 0, 0, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            reset_peak(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.peak = rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = peak_bytes(self.device) or 0
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        self.used = self.peak - self.base
