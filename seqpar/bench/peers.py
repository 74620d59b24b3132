"""What seqpar is measured against: plain SDPA on one device and PyTorch's context_parallel.

``torch.distributed.tensor.experimental.context_parallel`` is the strongest
peer we know (issue 5): it monkey-patches ``F.scaled_dot_product_attention`` so
that inside the context SDPA on sequence shards runs ring attention with either
an all-gather or an all-to-all KV rotation (``set_rotate_method``), on whichever
SDPA kernel ``sdpa_kernel`` selects (cuDNN or flash). We drive it the way its
own tests do (test/distributed/tensor/test_attention.py), except that q/k/v are
never handed to it as ``buffers``: those are sharded with ``resize_``, which
keeps the full-length storage alive and would inflate its peak memory. Instead
one int64 buffer of positions goes through it; what comes back is exactly the
global positions this rank owns (its head-tail load balancing for causal), and
q/k/v shards are cut at those positions. Everything version-specific is
guarded: the GPU images run torch 2.11, CI runs 2.13.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

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


def expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, Hkv, L, D) -> (B, heads, L, D)`` by repeating each kv head (GQA without enable_gqa)."""
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


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


def context_parallel_available() -> str | None:
    """None if torch has context_parallel and set_rotate_method, else why not."""
    try:
        from torch.distributed.tensor.experimental import context_parallel  # noqa: F401
        from torch.distributed.tensor.experimental._attention import (  # noqa: F401
            set_rotate_method,
        )
    except ImportError as exc:
        return f"torch {torch.__version__} lacks context_parallel/set_rotate_method: {exc}"
    return None


def _cp_options() -> object | None:
    try:
        from torch.distributed.tensor.experimental._attention import _cp_options
    except ImportError:
        return None
    return _cp_options


@contextlib.contextmanager
def torch_context_parallel(mesh: DeviceMesh, length: int, rotate: str,
                           device: torch.device) -> Iterator[torch.Tensor]:
    """Enter PyTorch context parallelism over ``mesh`` for sequences of ``length``.

    Yields the global positions (int64, ``(L/P,)``) of the tokens this rank
    must hold; q/k/v passed to SDPA inside must be those tokens. Restores the
    global rotate method on exit (it is module state in torch).
    """
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    options = _cp_options()
    old_rotate = getattr(options, "rotate_method", None)
    set_rotate_method(rotate)
    positions = torch.arange(length, device=device)
    try:
        with context_parallel(mesh, buffers=[positions], buffer_seq_dims=[0],
                              no_restore_buffers={positions}):
            # positions was resized in place to this rank's shard
            yield positions.clone()
    finally:
        if options is not None and old_rotate is not None:
            options.rotate_method = old_rotate


def make_mesh(device: torch.device, world: int) -> DeviceMesh:
    """A 1-D DeviceMesh over the default group (what context_parallel wants)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,))
