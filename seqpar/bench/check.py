"""The numerics check: each variant's output against single-device attention.

Rank 0 computes the full problem once per problem (float64 on CPU; on GPU float32
up to ``--check-fp32-max-len``, above it the benchmark dtype on cuDNN/flash) and
keeps it on the host, so it never counts towards a variant's peak memory. After
a variant's probe, every rank's output rows are gathered on rank 0 in global order
and compared with it (relative L2 error, head by head to bound memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..comm.compat import all_gather_flat
from ..kernels.reference import dense_attention
from ..utils.numerics import TOLERANCE, dtype_name, rel_err
from .agree import from_rank0
from .launch import Dist
from .outcome import classify, free_memory
from .problem import Problem
from .sdpa import expand_kv, sdpa_backend


@dataclass
class Reference:
    """Single-device output of a problem: the tensor on rank 0 only, ``available`` everywhere."""

    tensor: torch.Tensor | None
    note: str
    available: bool


def compute_reference(ctx, p: Problem) -> Reference:
    """The reference of ``p`` on rank 0 (``ctx``: a ``runners.RunContext``); every rank
    learns whether it exists, because the check's gather is a collective."""
    args, d = ctx.args, ctx.d
    if p.length > args.check_max_len:
        return Reference(None, f"not checked: L={p.length} > --check-max-len "
                               f"{args.check_max_len}", False)
    ref, note = None, "reference computed on rank 0"
    if d.rank == 0:
        try:
            ref, note = _reference_on_rank0(ctx, p)
        except Exception as exc:  # noqa: BLE001 - the check is skipped, timings go on
            ref, note = None, "reference failed: " + classify(exc)[1]
        free_memory(d)
    available = from_rank0(d, ref is not None)  # also waits for rank 0
    return Reference(ref, note, available)


def _reference_on_rank0(ctx, p: Problem) -> tuple[torch.Tensor, str]:
    import torch.nn.functional as F

    q, k, v = ctx.inputs(p, None, count=3)
    if not ctx.d.cuda:
        out = dense_attention(q, k, v, causal=p.causal, dtype=torch.float64)
        return out.cpu(), "sdpa float64 (math) on 1 process"
    k, v = expand_kv(k, p.hq), expand_kv(v, p.hq)
    with torch.no_grad():
        if p.length <= ctx.args.check_fp32_max_len:
            try:
                with sdpa_backend("efficient"):
                    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                         is_causal=p.causal)
                return out.cpu(), "sdpa float32 (efficient) on 1 GPU"
            except RuntimeError:
                pass
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=p.causal)
        return out.cpu(), f"sdpa {dtype_name(ctx.dtype)} (cudnn/flash) on 1 GPU"


def gather_global(d: Dist, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
    """The full ``(B, H, L, D)`` tensor on rank 0 from every rank's rows at ``positions``."""
    # (B, H, Ls, D) -> (Ls, B, H, D): rank blocks contiguous for the all-gather
    x0 = x.movedim(2, 0).contiguous()
    buf = x0.new_empty((d.world * x0.shape[0], *x0.shape[1:]))
    all_gather_flat(buf, x0, group=d.group)
    pos = positions.to(device=x.device, dtype=torch.int64).contiguous()
    pos_all = pos.new_empty(d.world * pos.numel())
    all_gather_flat(pos_all, pos, group=d.group)
    if d.rank != 0:
        return None
    full = torch.empty_like(buf)
    full[pos_all] = buf  # rank order -> global order
    return full.movedim(0, 2)  # (L, B, H, D) -> (B, H, L, D)


def check_output(d: Dist, dtype: torch.dtype, out: torch.Tensor, positions: torch.Tensor,
                 ref: Reference) -> dict:
    """Relative L2 error of the gathered output against the reference (on rank 0)."""
    if not ref.available:
        return {"skipped": ref.note}
    full = gather_global(d, out, positions)
    if full is None or ref.tensor is None:
        return {}
    tol = TOLERANCE[dtype]
    err = rel_err(full, ref.tensor, dim=1)  # head by head: bounded extra memory
    del full
    return {"rel_err": err, "tol": tol, "ok": err < tol, "reference": ref.note}
