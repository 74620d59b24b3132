"""Plain SDPA as the benchmark drives it: backend choice and one timed fwd+bwd step.

Shared by the runners that time ``F.scaled_dot_product_attention`` itself (the
one-device ceiling, PyTorch's context_parallel, which patches it) and by the
numerics reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NoReturn

import torch
import torch.nn.functional as F

from ..kernels.cuda import repeat_kv

#: SDPA backend names accepted on the command line.
SDPA_BACKENDS = ("cudnn", "flash", "efficient", "math", "default")


def sdpa_backend(name: str) -> contextlib.AbstractContextManager:
    """Context restricting SDPA to one backend ("default": torch's own choice)."""
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    enum = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
            "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}[name]
    return sdpa_kernel([getattr(SDPBackend, enum)])


def check_backends(names: list[str], error: Callable[[str], NoReturn]) -> None:
    """Reject SDPA backend names that ``sdpa_backend`` does not know (``error``: parser.error)."""
    for name in names:
        if name not in SDPA_BACKENDS:
            error(f"unknown SDPA backend {name!r}; choose from {SDPA_BACKENDS}")


expand_kv = repeat_kv  # (B, Hkv, L, D) -> (B, heads, L, D)


class SdpaStep:
    """One fwd+bwd of ``F.scaled_dot_product_attention`` on fixed inputs.

    GQA goes through ``enable_gqa=True`` first; if the selected kernel refuses
    it, KV heads are repeated instead (inside the timed step, as a user would
    have to) and ``gqa`` says so.
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor,
                 causal: bool):
        self.q, self.k, self.v, self.dout, self.causal = q, k, v, dout, causal
        self.gqa = "native" if q.shape[1] == k.shape[1] else "enable_gqa"

    def _forward(self) -> torch.Tensor:
        q, k, v = self.q, self.k, self.v
        if self.gqa.startswith("expanded"):
            k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        kwargs = {"enable_gqa": True} if self.gqa == "enable_gqa" else {}
        # looked up at call time: inside context_parallel this attribute is patched
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, **kwargs)

    def __call__(self) -> torch.Tensor:
        out = self._forward()
        torch.autograd.grad(out, (self.q, self.k, self.v), self.dout)
        return out.detach()

    def probe(self) -> torch.Tensor:
        """First call; falls back to repeated KV heads if ``enable_gqa`` is refused."""
        if self.gqa != "enable_gqa":
            return self()
        try:
            return self()
        except (RuntimeError, NotImplementedError, AssertionError, TypeError) as exc:
            first = " ".join(str(exc).split())[:200]
            self.gqa = f"expanded kv (enable_gqa failed: {type(exc).__name__}: {first})"
            return self()
