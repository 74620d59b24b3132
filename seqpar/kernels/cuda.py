"""CUDA block attention through the aten SDPA ops that return the log-sum-exp.

cuDNN first (≈540 TFLOP/s fwd+bwd on H200 vs ≈325 for flash), flash second.
Both take bf16/fp16; the backward takes the *final* output and lse, which is
what ring/all-gather need to get exact block gradients. Stateless: which of them
serves a shape (and whether cuDNN takes GQA as is) is the kernel selector's
choice (``kernels/selector.py``).
"""

from __future__ import annotations

import torch

aten = torch.ops.aten


def repeat_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, Hkv, L, D) -> (B, heads, L, D)`` by repeating each kv head (GQA for kernels
    that take equal head counts only)."""
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Repeat kv heads for GQA: ``(B, Hkv, L, D) -> (B, Hq, L, D)``."""
    return repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])


def _fold_kv_grad(dk: torch.Tensor, hkv: int) -> torch.Tensor:
    """Sum the gradients of repeated kv heads: ``(B, Hq, L, D) -> (B, Hkv, L, D)``."""
    b, hq, lk, d = dk.shape
    if hq == hkv:
        return dk
    return dk.float().reshape(b, hkv, hq // hkv, lk, d).sum(2)


def _empty_seed(device) -> torch.Tensor:
    return torch.empty((), dtype=torch.long, device=device)


def cudnn_forward(q, k, v, *, scale: float, causal: bool, native_gqa: bool = True):
    """cuDNN SDPA forward -> ``(out, lse)``. With ``native_gqa`` the op gets Hkv < Hq as is
    (no repeated K/V); torch builds whose cuDNN op refuses that raise RuntimeError, and
    the kernel selector then takes ``native_gqa=False`` (K/V heads repeated) instead."""
    ke, ve = (k, v) if native_gqa else _expand_kv(q, k, v)
    res = aten._scaled_dot_product_cudnn_attention(
        q, ke, ve, None, True, 0.0, causal, False, scale=scale)
    out, lse = res[0], res[1]
    # lse: (B, Hq, Lq, 1) -> (B, Hq, Lq)
    return out, lse.reshape(q.shape[0], q.shape[1], q.shape[2])


def cudnn_backward(dout, q, k, v, out, lse, *, scale: float, causal: bool,
                   native_gqa: bool = True):
    """Block gradients through the cuDNN op, K/V taken as its forward took them."""
    ke, ve = (k, v) if native_gqa else _expand_kv(q, k, v)
    seed = _empty_seed(q.device)
    dq, dk, dv = aten._scaled_dot_product_cudnn_attention_backward(
        dout.contiguous(), q, ke, ve, out.contiguous(),
        lse.float().contiguous().unsqueeze(-1),  # (B, Hq, Lq) -> (B, Hq, Lq, 1)
        seed, seed, None, None, None, q.shape[2], k.shape[2], 0.0, causal, scale=scale,
    )
    return dq, _fold_kv_grad(dk, k.shape[1]), _fold_kv_grad(dv, k.shape[1])


def flash_forward(q, k, v, *, scale: float, causal: bool):
    ke, ve = _expand_kv(q, k, v)
    res = aten._scaled_dot_product_flash_attention(q, ke, ve, 0.0, causal, False, scale=scale)
    return res[0], res[1]


def flash_backward(dout, q, k, v, out, lse, *, scale: float, causal: bool):
    ke, ve = _expand_kv(q, k, v)
    seed = _empty_seed(q.device)
    dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
        dout.contiguous(), q, ke, ve, out.contiguous(), lse.float().contiguous(),
        None, None, q.shape[2], k.shape[2], 0.0, causal, seed, seed, scale=scale,
    )
    return dq, _fold_kv_grad(dk, k.shape[1]), _fold_kv_grad(dv, k.shape[1])
