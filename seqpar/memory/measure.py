"""Measuring the peak of live tensor memory on any device, CPU included.

``torch.cuda.max_memory_allocated`` has no CPU counterpart, and RSS moves in
pages and keeps freed memory. :class:`LivePeak` is a dispatch mode that sees
every op's outputs; a storage is counted from the op that created it until the
storage is freed (a weak reference's callback), so ``peak`` is the largest sum of
live bytes created inside the context, the quantity the caching allocator's
``max_memory_allocated`` reports on GPU (without its rounding). Tensors that
existed before the context (parameters, inputs) are not counted. Tensor
subclasses that wrap others (DTensor: a global-shape wrapper around this rank's
shard) are counted by their inner tensors, so a DTensor costs its local shard, not
its global size. Used by the memory tests and the planner's CPU validation.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _plain(t: torch.Tensor):
    """The plain tensors holding ``t``'s memory (a wrapper subclass's inner tensors)."""
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for name in names:
            inner = getattr(t, name)
            if isinstance(inner, torch.Tensor):
                yield from _plain(inner)
    else:
        yield t


class LivePeak(TorchDispatchMode):
    """``with LivePeak() as m: ...`` then ``m.peak`` (bytes) and ``m.live`` (still alive)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}  # storage id -> weak reference
        self._known: set[int] = set()

    def _freed(self, key: int, size: int) -> None:
        self.live -= size
        self._refs.pop(key, None)

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        ref = self._refs.get(key)
        if ref is not None and ref() is st:
            return  # a view of, or an in-place op on, a storage already counted
        try:
            size = st.nbytes()
        except RuntimeError:  # no data (meta, fake)
            return
        self._refs[key] = weakref.ref(st, lambda _r, k=key, s=size: self._freed(k, s))
        self.live += size
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(p.untyped_storage()) for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) for p in _plain(t)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                for p in _plain(t):
                    if id(p.untyped_storage()) not in inputs:
                        self._track(p)
        return out
