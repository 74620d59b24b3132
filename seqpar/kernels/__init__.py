"""Local block attention returning ``(out, lse)``, with a backward that takes lse.

``block_forward``/``block_backward`` pick the fastest exact implementation for
the inputs: on CUDA with bf16/fp16 the cuDNN SDPA op, else flash (whichever
accepts the shapes first); everywhere else the pure-PyTorch fp32/fp64
reference. The choice is made and remembered by one ``KernelSelector``
(``SELECTOR``), keyed on the shape class and the SDPA backend flags, so it can
be reported (``SELECTOR.report()``, shown by ``seqpar bench``) and forgotten
(``SELECTOR.reset()``).
"""

from __future__ import annotations

import functools

import torch

from . import cuda, reference
from .reference import acc_dtype
from .selector import KernelSelector, sdp_flags

#: every block implementation by name (``backend=`` of block_forward/block_backward)
IMPLEMENTATIONS = {
    "cudnn": (cuda.cudnn_forward, cuda.cudnn_backward),
    "cudnn-repeat-kv": (functools.partial(cuda.cudnn_forward, native_gqa=False),
                        functools.partial(cuda.cudnn_backward, native_gqa=False)),
    "flash": (cuda.flash_forward, cuda.flash_backward),
    "reference": (reference.forward, reference.backward),
}

#: the process-wide kernel choice
SELECTOR = KernelSelector(IMPLEMENTATIONS)


def block_forward(q, k, v, *, scale: float, causal: bool, backend: str | None = None):
    """Attention of one q block against one kv block.

    q ``(B, Hq, Lq, D)``, k/v ``(B, Hkv, Lk, D)``. ``causal`` is top-left
    aligned (query i sees keys ``j <= i``), which is the diagonal block when
    the q and kv blocks start at the same global position.
    Returns ``out (B, Hq, Lq, D)`` and ``lse (B, Hq, Lq)`` (fp32; fp64 for fp64 inputs).
    """
    return SELECTOR.forward(q, k, v, scale=scale, causal=causal, backend=backend)


def block_backward(dout, q, k, v, out, lse, *, scale: float, causal: bool,
                   backend: str | None = None):
    """Gradients of one block given the final ``out`` and ``lse`` of its query rows."""
    return SELECTOR.backward(dout, q, k, v, out, lse, scale=scale, causal=causal,
                             backend=backend)


def chosen_backend(q: torch.Tensor, k: torch.Tensor, causal: bool) -> str:
    """Which implementation serves these inputs (after the first forward)."""
    return SELECTOR.choose(q, k, causal)


__all__ = ["IMPLEMENTATIONS", "SELECTOR", "KernelSelector", "acc_dtype", "block_backward",
           "block_forward", "chosen_backend", "sdp_flags"]
