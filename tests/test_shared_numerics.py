"""The shared numerics helpers (seqpar.utils, the dense reference in kernels/reference.py)
agree with the copies the tests and the demo still carry, so those can switch to them."""

from __future__ import annotations

import math

import pytest
import torch
from parity import TOL, dense_mask, dense_reference, rel_err

from seqpar.kernels.reference import dense_attention, dense_attention_grads, document_mask
from seqpar.utils import numerics
from seqpar.utils.memory import PeakMemory, peak_bytes


def _problem(hq=4, hkv=2, length=24, d=8):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(1, h, length, d, generator=g, dtype=torch.float64)
            for h in (hq, hkv, hkv, hq)]


@pytest.mark.parametrize("cu_seqlens", [None, [0, 5, 16, 24]])
@pytest.mark.parametrize("causal", [True, False])
def test_dense_reference_matches_the_tests_copy(causal, cu_seqlens):
    q, k, v, dout = _problem()
    if cu_seqlens is not None:
        assert torch.equal(document_mask(24, causal, cu_seqlens), dense_mask(24, causal,
                                                                             cu_seqlens))
    else:
        assert document_mask(24, causal) is None
    ours = dense_attention_grads(q, k, v, dout, causal=causal, cu_seqlens=cu_seqlens)
    theirs = dense_reference(q, k, v, dout, causal, cu_seqlens)
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.float64 and torch.allclose(a, b, rtol=0, atol=1e-12)
    out = dense_attention(q.float(), k.float(), v.float(), causal=causal, cu_seqlens=cu_seqlens)
    assert out.dtype == torch.float64 and torch.allclose(out, theirs[0], atol=1e-6)
    assert not out.requires_grad


def test_rel_err_and_tables():
    a, b = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    expect = ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert numerics.rel_err(a, b) == pytest.approx(expect, rel=1e-12)
    assert numerics.rel_err(a, b, dim=1) == pytest.approx(expect, rel=1e-12)  # slice by slice
    assert numerics.rel_err(a, b) == pytest.approx(rel_err(a, b), rel=1e-12)
    assert numerics.rel_err(b, b) == 0.0 and math.isfinite(numerics.rel_err(a, 0 * b))
    with pytest.raises(ValueError, match="shapes differ"):
        numerics.rel_err(a, b[:1])
    for dtype, tol in TOL.items():  # the tests' table is the shared one
        assert numerics.TOLERANCE[dtype] == tol
    assert set(numerics.DTYPES.values()) <= set(numerics.TOLERANCE)
    assert numerics.dtype_name(numerics.DTYPES["bf16"]) == "bfloat16"


def test_peak_memory_on_cpu():
    assert peak_bytes(torch.device("cpu")) is None
    with PeakMemory(torch.device("cpu")) as pm:
        x = torch.ones(4 << 20)  # 16 MiB
        del x
    assert pm.peak >= pm.base > 0 and pm.used >= 0
