"""Median CUDA-event time of a callable on one GPU (the one-GPU study scripts).

`seqpar bench attention` times with ranks synchronised (``measure.time_once``); this is the
plain single-device version, kept here so the scripts share one definition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def cuda_median_ms(fn: Callable[[], object], iters: int, warmup: int = 1) -> float:
    """Median over ``iters`` timed calls of ``fn`` after ``warmup`` untimed ones, in ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
