"""Local block attention returning ``(out, lse)``, with a backward that takes lse.

``block_forward``/``block_backward`` pick the fastest exact implementation for
the inputs: on CUDA with bf16/fp16 the cuDNN SDPA op, else flash (whichever
accepts the shapes first, remembered per shape class); everywhere else the
pure-PyTorch fp32/fp64 reference.
"""

from __future__ import annotations

import torch

from . import cuda, reference
from .reference import acc_dtype

_IMPLS = {
    "cudnn": (cuda.cudnn_forward, cuda.cudnn_backward),
    "flash": (cuda.flash_forward, cuda.flash_backward),
    "reference": (reference.forward, reference.backward),
}
_chosen: dict[tuple, str] = {}


def _candidates(q: torch.Tensor) -> list[str]:
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        return ["reference"]
    names = []
    if torch.backends.cuda.cudnn_sdp_enabled():
        names.append("cudnn")
    if torch.backends.cuda.flash_sdp_enabled():
        names.append("flash")
    return names + ["reference"]


def _key(q, k, causal) -> tuple:
    return (q.device.type, q.dtype, q.shape[-1], q.shape[1] // k.shape[1], causal)


def block_forward(q, k, v, *, scale: float, causal: bool, backend: str | None = None):
    """Attention of one q block against one kv block.

    q ``(B, Hq, Lq, D)``, k/v ``(B, Hkv, Lk, D)``. ``causal`` is top-left
    aligned (query i sees keys ``j <= i``), which is the diagonal block when
    the q and kv blocks start at the same global position.
    Returns ``out (B, Hq, Lq, D)`` and ``lse (B, Hq, Lq)`` (fp32; fp64 for fp64 inputs).
    """
    if backend is not None:
        return _IMPLS[backend][0](q, k, v, scale=scale, causal=causal)
    key = _key(q, k, causal)
    if key in _chosen:
        return _IMPLS[_chosen[key]][0](q, k, v, scale=scale, causal=causal)
    errors = []
    for name in _candidates(q):
        try:
            result = _IMPLS[name][0](q, k, v, scale=scale, causal=causal)
        except RuntimeError as exc:  # kernel does not take these shapes: try the next
            errors.append(f"{name}: {exc}")
            continue
        _chosen[key] = name
        return result
    raise RuntimeError("no attention kernel accepted the inputs: " + "; ".join(errors))


def block_backward(dout, q, k, v, out, lse, *, scale: float, causal: bool,
                   backend: str | None = None):
    """Gradients of one block given the final ``out`` and ``lse`` of its query rows."""
    name = backend or _chosen.get(_key(q, k, causal)) or _candidates(q)[0]
    return _IMPLS[name][1](dout, q, k, v, out, lse, scale=scale, causal=causal)


def chosen_backend(q: torch.Tensor, k: torch.Tensor, causal: bool) -> str:
    """Which implementation serves these inputs (after the first forward)."""
    return _chosen.get(_key(q, k, causal), _candidates(q)[0])


__all__ = ["acc_dtype", "block_backward", "block_forward", "chosen_backend"]
