"""``--compile``: regional ``torch.compile``, one graph per transformer block, with the
attention call left out of the graph.

Why regional: a block is the unit that repeats, so one compilation serves all of
them (same code, same shapes), compile time stays that of one block, and the
token-wise work around the matmuls (RMSNorm, RoPE, SwiGLU, residual adds, casts)
fuses into a few kernels. Why the attention stays out: it is seqpar's sequence-
parallel attention (collectives, its own autograd Functions, cuDNN/flash kernels
already at the hardware's ceiling); tracing it gains nothing and would put
process groups into the graph. The call goes through :class:`EagerAttention`,
whose ``__call__`` is ``torch.compiler.disable``-d: dynamo ends the graph before
it and starts a new one after it (two graphs per block).

Order (``parallelize``): compile wraps the block's own ``forward`` *before*
activation checkpointing wraps it, so the checkpoint runs (and recomputes) the
compiled function, and FSDP2's hooks stay outside on the module's ``__call__``.

Refused: ``tp > 1`` (the tensor-parallel layers' collectives and DTensor
boundaries inside the block are not tested compiled), a tiled MLP (its own
autograd Function over chunks) is allowed but stays a graph break.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..memory.checkpointing import AttentionWrapper


class EagerAttention(AttentionWrapper):
    """An attention callable that ``torch.compile`` calls but never traces."""

    @torch.compiler.disable
    def __call__(self, q, k, v, causal, **kwargs):
        return self.inner(q, k, v, causal, **kwargs)


def check_compile(tp: int) -> None:
    """ValueError for a configuration ``--compile`` does not support."""
    if tp > 1:
        raise ValueError(f"--compile needs tp=1 (got tp={tp}): the tensor-parallel layers' "
                         f"collectives inside a block are not compiled; drop --compile or "
                         f"use --tp 1")


def apply_compile(model: nn.Module, *, tp: int = 1, backend: str = "inductor",
                  **options) -> None:
    """Compile every block of ``model.layers`` in place (parameter names unchanged);
    attention calls stay eager. ``options`` go to ``torch.compile`` (e.g. ``mode``)."""
    check_compile(tp)
    for i, block in enumerate(model.layers):
        if getattr(block, "_seqpar_compiled", False):
            raise ValueError(f"apply_compile: layer {i} is already compiled")
        if "forward" in vars(block):  # an instance forward: a checkpoint wrapper
            raise ValueError(f"apply_compile: layer {i}'s forward is already wrapped "
                             f"(activation checkpointing?); compile before checkpointing")
        attn = block.attention
        if not isinstance(attn.attn_fn, EagerAttention):
            attn.attn_fn = EagerAttention(attn.attn_fn)
        block.forward = torch.compile(block.forward, backend=backend, dynamic=False,
                                      **options)
        block._seqpar_compiled = True
