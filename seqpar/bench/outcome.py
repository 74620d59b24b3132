"""What became of one step of a variant, agreed by every rank.

A variant can fail on one rank only (an OOM, a shape one kernel refuses); the
others must learn it before their next collective, or they would hang. So each
step runs through ``guarded``: run here, classify a failure, agree on the worst
outcome over ranks.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from .agree import agree_outcome
from .launch import Dist


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, one-line reason) of a variant that raised ``exc``."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:600]
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(exc, ValueError):
        return "invalid", text
    if (oom and isinstance(exc, oom)) or "out of memory" in str(exc).lower():
        return "oom", text
    if isinstance(exc, NotImplementedError):
        return "unsupported", text
    return "error", text


def free_memory(d: Dist) -> None:
    """Return memory between variants; on CPU there is nothing worth a gc pass (~0.3 s)."""
    if d.cuda:
        gc.collect()  # tracebacks of a caught OOM hold frames that hold tensors
        torch.cuda.empty_cache()


def guarded(d: Dist, fn: Callable[[], object]) -> tuple[object, str, str]:
    """Run ``fn`` here, then agree with every rank on the outcome (also a barrier)."""
    result, status, reason = None, "ok", ""
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - recorded per variant, the run goes on
        status, reason = classify(exc)
        result = None
    status, reason = agree_outcome(d, status, reason)
    if status != "ok":
        result = None
        free_memory(d)
    return result, status, reason
