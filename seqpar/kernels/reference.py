"""Pure-PyTorch block attention: the exact reference path (and the CPU path).

Computes in float64 for float64 inputs and float32 otherwise, returns the
log-sum-exp so partial results can be merged, and takes the *final* output and
lse in backward so a block's gradient is exact without recomputing the merge.
"""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    acc = acc_dtype(q.dtype)
    # (B, Hq, Lq, D) -> (B, Hkv, G, Lq, D): q heads sharing one kv head side by side
    qg = q.to(acc).reshape(b, hkv, hq // hkv, lq, d)
    # (B, Hkv, Lk, D) -> (B, Hkv, 1, D, Lk)
    kt = k.to(acc).unsqueeze(2).transpose(-1, -2)
    s = torch.matmul(qg, kt) * scale  # (B, Hkv, G, Lq, Lk)
    if causal:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu_(1)
        s.masked_fill_(mask, float("-inf"))
    return s


def _safe(lse: torch.Tensor) -> torch.Tensor:
    """lse with fully-masked rows (-inf) replaced by 0, so exp(s - lse) = 0 there."""
    return torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)


def forward(q, k, v, *, scale: float, causal: bool):
    """(out, lse) for one block: out ``(B, Hq, Lq, D)``, lse ``(B, Hq, Lq)``, both fp32 (fp64
    for fp64 inputs)."""
    b, hq, lq, d = q.shape
    s = _scores(q, k, scale, causal)  # (B, Hkv, G, Lq, Lk)
    # normalise by the row sum, as softmax does, rather than by exp(-lse): lse ~ log(Lk)
    # carries an absolute rounding error of ~ulp(lse) that exp() turns into one relative
    # error shared by the whole row (measured: fp32 out error 1.2x dense SDPA's -> ~1x)
    m = _safe(s.amax(dim=-1, keepdim=True))  # (B, Hkv, G, Lq, 1)
    e = torch.exp(s - m)
    total = e.sum(dim=-1, keepdim=True)  # (B, Hkv, G, Lq, 1); 0 for a fully masked row
    # (B, Hkv, G, Lq, Lk) @ (B, Hkv, 1, Lk, D) -> (B, Hkv, G, Lq, D)
    out = torch.matmul(e, v.to(e.dtype).unsqueeze(2)) / total.clamp_min(1e-30)
    lse = (m + torch.log(total)).squeeze(-1)  # (B, Hkv, G, Lq); -inf where fully masked
    # (B, Hkv, G, Lq, D) -> (B, Hq, Lq, D); (B, Hkv, G, Lq) -> (B, Hq, Lq)
    return out.reshape(b, hq, lq, d), lse.reshape(b, hq, lq)


def backward(dout, q, k, v, out, lse, *, scale: float, causal: bool):
    """Block gradients (dq, dk, dv) given the final ``out``/``lse`` of the full row."""
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    acc = acc_dtype(q.dtype)
    s = _scores(q, k, scale, causal)  # (B, Hkv, G, Lq, Lk)
    # (B, Hq, Lq) -> (B, Hkv, G, Lq, 1)
    lse_g = _safe(lse.to(acc)).reshape(b, hkv, g, lq, 1)
    p = torch.exp(s - lse_g)
    # (B, Hq, Lq, D) -> (B, Hkv, G, Lq, D)
    do = dout.to(acc).reshape(b, hkv, g, lq, d)
    o = out.to(acc).reshape(b, hkv, g, lq, d)
    vf = v.to(acc).unsqueeze(2)  # (B, Hkv, 1, Lk, D)
    kf = k.to(acc).unsqueeze(2)
    qf = q.to(acc).reshape(b, hkv, g, lq, d)
    dv = torch.matmul(p.transpose(-1, -2), do).sum(2)  # (B, Hkv, Lk, D)
    dp = torch.matmul(do, vf.transpose(-1, -2))  # (B, Hkv, G, Lq, Lk)
    delta = (do * o).sum(-1, keepdim=True)  # (B, Hkv, G, Lq, 1)
    ds = p * (dp - delta)
    dq = torch.matmul(ds, kf) * scale  # (B, Hkv, G, Lq, D)
    dk = torch.matmul(ds.transpose(-1, -2), qf).sum(2) * scale  # (B, Hkv, Lk, D)
    return dq.reshape(b, hq, lq, d), dk, dv


# ---------------------------------------------------------------- dense (unsharded) reference

def document_mask(length: int, causal: bool, cu_seqlens=None,
                  device: torch.device | str | None = None) -> torch.Tensor | None:
    """Boolean ``(L, L)`` mask, True = may attend, for packed documents; None without them
    (plain full/causal attention needs no mask)."""
    if cu_seqlens is None:
        return None
    pos = torch.arange(length, device=device)
    bounds = torch.as_tensor(cu_seqlens[1:], device=device).long()
    doc = torch.bucketize(pos, bounds, right=True)  # (L,) document id of every position
    mask = doc[:, None] == doc[None, :]
    return mask & (pos[None, :] <= pos[:, None]) if causal else mask


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                    cu_seqlens=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Unsharded attention of the full ``(B, H, L, D)`` q/k/v through SDPA in ``dtype``
    (float64 by default): the yardstick every strategy is checked against. GQA
    (Hkv < Hq) as ``enable_gqa``; no autograd."""
    import torch.nn.functional as F

    mask = document_mask(q.shape[2], causal, cu_seqlens, q.device)
    with torch.no_grad():
        return F.scaled_dot_product_attention(
            q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=mask,
            is_causal=causal and mask is None, enable_gqa=q.shape[1] != k.shape[1])


def dense_attention_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          dout: torch.Tensor, *, causal: bool, cu_seqlens=None,
                          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """``(out, dq, dk, dv)`` of unsharded attention in ``dtype`` (float64 by default) for
    the output gradient ``dout``."""
    import torch.nn.functional as F

    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    mask = document_mask(q.shape[2], causal, cu_seqlens, q.device)
    with torch.enable_grad():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             is_causal=causal and mask is None,
                                             enable_gqa=q.shape[1] != k.shape[1])
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout.to(dtype))
    return out.detach(), dq, dk, dv
