"""Which block-attention implementation serves a shape class: one object, seen and reset.

The fastest exact kernel is not known in advance: cuDNN's op refuses some shapes
(and, on some torch builds, K/V with fewer heads than Q), flash others, and the
SDPA backend flags (``torch.backends.cuda.enable_cudnn_sdp`` and friends, or an
``sdpa_kernel`` context) switch kernels off. So the first forward of a shape
class tries the candidates in order and remembers the first that accepts it;
later calls (and the backward, which must match its forward) go straight to it.

The memory is keyed on the SDPA flags as well as the shape class, so a choice
made with cuDNN enabled is never reused after cuDNN is disabled (or the other
way round). ``report()`` lists every choice (the benchmark writes it into its
JSON and tables) and ``reset()`` forgets them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: an implementation: (forward -> (out, lse), backward -> (dq, dk, dv))
Impl = tuple[Callable, Callable]
#: the SDPA backend flags a choice depends on: (cudnn enabled, flash enabled)
Flags = tuple[bool, bool]


def sdp_flags() -> Flags:
    """The current SDPA backend flags that decide which CUDA kernels may run."""
    return (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled())


def default_candidates(q: torch.Tensor, k: torch.Tensor, flags: Flags) -> list[str]:
    """Implementations to try, fastest first: cuDNN (GQA as is, then with K/V heads
    repeated), flash, the reference; only the reference off CUDA or in fp32/fp64."""
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        return ["reference"]
    cudnn, flash = flags
    names = []
    if cudnn:
        names.append("cudnn")
        if k.shape[1] != q.shape[1]:
            names.append("cudnn-repeat-kv")
    if flash:
        names.append("flash")
    return names + ["reference"]


class KernelSelector:
    """Chooses, remembers and reports the block kernel per (shape class, SDPA flags).

    A shape class is (device type, dtype, head dim, GQA group Hq/Hkv, causal): what
    decides whether a kernel accepts the inputs; lengths do not.
    """

    def __init__(self, impls: dict[str, Impl],
                 candidates: Callable[[torch.Tensor, torch.Tensor, Flags], list[str]]
                 = default_candidates,
                 flags: Callable[[], Flags] = sdp_flags):
        self.impls = impls
        self._candidates = candidates
        self._flags = flags
        self._chosen: dict[tuple, str] = {}
        self._refused: dict[tuple, list[str]] = {}  # why earlier candidates refused

    def key(self, q: torch.Tensor, k: torch.Tensor, causal: bool) -> tuple:
        """(device type, dtype, D, Hq/Hkv, causal, SDPA flags) of these inputs."""
        return (q.device.type, q.dtype, q.shape[-1], q.shape[1] // k.shape[1], bool(causal),
                self._flags())

    def candidates(self, q: torch.Tensor, k: torch.Tensor) -> list[str]:
        """Implementations that would be tried for these inputs now, in order."""
        return self._candidates(q, k, self._flags())

    def chosen(self, q: torch.Tensor, k: torch.Tensor, causal: bool) -> str | None:
        """The implementation chosen for these inputs under the current flags, if any yet."""
        return self._chosen.get(self.key(q, k, causal))

    def choose(self, q: torch.Tensor, k: torch.Tensor, causal: bool) -> str:
        """The implementation that serves these inputs: the remembered choice, else the
        first candidate (what a forward would try first)."""
        return self.chosen(q, k, causal) or self.candidates(q, k)[0]

    def forward(self, q, k, v, *, scale: float, causal: bool, backend: str | None = None):
        """Block forward through ``backend``, else the chosen (or first accepting) kernel."""
        if backend is not None:
            return self.impls[backend][0](q, k, v, scale=scale, causal=causal)
        key = self.key(q, k, causal)
        name = self._chosen.get(key)
        if name is not None:
            return self.impls[name][0](q, k, v, scale=scale, causal=causal)
        errors = []
        for name in self._candidates(q, k, key[-1]):
            try:
                result = self.impls[name][0](q, k, v, scale=scale, causal=causal)
            except RuntimeError as exc:  # kernel does not take these shapes: try the next
                errors.append(f"{name}: {' '.join(str(exc).split())[:300]}")
                continue
            self._chosen[key] = name
            self._refused[key] = errors
            return result
        raise RuntimeError("no attention kernel accepted the inputs: " + "; ".join(errors))

    def backward(self, dout, q, k, v, out, lse, *, scale: float, causal: bool,
                 backend: str | None = None):
        """Block gradients through the implementation the forward used."""
        name = backend or self.choose(q, k, causal)
        return self.impls[name][1](dout, q, k, v, out, lse, scale=scale, causal=causal)

    def report(self) -> list[dict]:
        """Every choice made so far: shape class, SDPA flags, kernel, and why earlier
        candidates refused (JSON-ready)."""
        rows = []
        for key, name in self._chosen.items():
            device, dtype, head_dim, group, causal, (cudnn, flash) = key
            rows.append({"device": device, "dtype": str(dtype).replace("torch.", ""),
                         "head_dim": head_dim, "gqa_group": group, "causal": causal,
                         "sdp_flags": {"cudnn": cudnn, "flash": flash}, "kernel": name,
                         "refused": list(self._refused.get(key, []))})
        return rows

    def reset(self) -> None:
        """Forget every choice: the next forward of each shape class tries again."""
        self._chosen.clear()
        self._refused.clear()
