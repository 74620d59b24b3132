"""Dtype names, the tolerance table and the relative error every exactness check uses.

One copy of each so the demo, the benchmark, training and the tests agree on what
"exact to the precision of the dtype" means.
"""

from __future__ import annotations

import math

import torch

#: dtype by the names the command lines accept (short and long forms)
DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
    "fp32": torch.float32, "float32": torch.float32,
    "fp64": torch.float64, "float64": torch.float64,
}

#: relative L2 error allowed against a float64 (or float32) dense reference, by the dtype
#: the sharded computation ran in
TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).replace("torch.", "")


def rel_err(a: torch.Tensor, b: torch.Tensor, *, dim: int | None = None) -> float:
    """``||a - b|| / ||b||`` computed in float64 on ``a``'s device.

    With ``dim`` the sums run slice by slice along that dimension, so the float64
    copies never exceed one slice (the benchmark checks multi-GiB outputs head by
    head); ``b`` may live on another device (a reference kept on the host).
    """
    if a.shape != b.shape:
        raise ValueError(f"rel_err: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    pairs = zip(a.unbind(dim), b.unbind(dim)) if dim is not None else [(a, b)]
    num = den = 0.0
    for x, y in pairs:
        x = x.detach().double()
        y = y.detach().to(device=x.device, dtype=torch.float64)
        num += float((x - y).pow(2).sum())
        den += float(y.pow(2).sum())
    return math.sqrt(num / max(den, 1e-300))
