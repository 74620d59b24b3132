"""The kernel selector: what it picks, what it reports, and that a change of SDPA
backend flags or a reset clears the choice (CPU; CUDA candidates are mocked)."""

from __future__ import annotations

import torch

import seqpar
from seqpar.kernels import SELECTOR, KernelSelector, reference
from seqpar.kernels.selector import default_candidates


def _qkv(hq=4, hkv=2, length=8, d=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, hq, length, d, generator=g, dtype=dtype)
    k = torch.randn(1, hkv, length, d, generator=g, dtype=dtype)
    return q, k, torch.randn(1, hkv, length, d, generator=g, dtype=dtype)


def test_process_selector_picks_and_reports_reference_on_cpu():
    q, k, v = _qkv()
    SELECTOR.reset()
    assert SELECTOR.chosen(q, k, True) is None
    out, lse = seqpar.kernels.block_forward(q, k, v, scale=0.25, causal=True)
    ref_out, ref_lse = reference.forward(q, k, v, scale=0.25, causal=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    assert SELECTOR.chosen(q, k, True) == "reference"
    assert seqpar.kernels.chosen_backend(q, k, True) == "reference"
    rows = SELECTOR.report()
    assert len(rows) == 1
    assert rows[0]["kernel"] == "reference" and rows[0]["device"] == "cpu"
    assert rows[0]["gqa_group"] == 2 and rows[0]["head_dim"] == 16 and rows[0]["causal"]
    assert rows[0]["dtype"] == "float32" and rows[0]["refused"] == []
    SELECTOR.reset()
    assert SELECTOR.report() == [] and SELECTOR.chosen(q, k, True) is None


class _Fake:
    """Mocked candidates: 'fast' refuses GQA, 'slow' takes anything; counts calls."""

    def __init__(self):
        self.flags = (True, True)
        self.calls: list[str] = []

    def impl(self, name, refuse_gqa):
        def fwd(q, k, v, *, scale, causal):
            self.calls.append(name)
            if refuse_gqa and k.shape[1] != q.shape[1]:
                raise RuntimeError(f"{name} refuses GQA")
            return reference.forward(q, k, v, scale=scale, causal=causal)

        def bwd(dout, q, k, v, out, lse, *, scale, causal):
            self.calls.append(name + ".bwd")
            return reference.backward(dout, q, k, v, out, lse, scale=scale, causal=causal)

        return fwd, bwd

    def candidates(self, q, k, flags):
        cudnn, flash = flags
        return (["fast"] if cudnn else []) + (["slow"] if flash else []) + ["reference"]


def test_selector_falls_back_remembers_and_forgets_on_flag_change():
    fake = _Fake()
    sel = KernelSelector({"fast": fake.impl("fast", True), "slow": fake.impl("slow", False),
                          "reference": fake.impl("reference", False)},
                         candidates=fake.candidates, flags=lambda: fake.flags)
    q, k, v = _qkv()
    sel.forward(q, k, v, scale=0.25, causal=False)
    assert fake.calls == ["fast", "slow"] and sel.chosen(q, k, False) == "slow"
    (row,) = sel.report()
    assert row["kernel"] == "slow" and "fast refuses GQA" in row["refused"][0]
    assert row["sdp_flags"] == {"cudnn": True, "flash": True}
    # remembered: the next forward goes straight to it, the backward follows it
    fake.calls.clear()
    out, lse = sel.forward(q, k, v, scale=0.25, causal=False)
    sel.backward(torch.ones_like(out), q, k, v, out, lse, scale=0.25, causal=False)
    assert fake.calls == ["slow", "slow.bwd"]
    # MHA shapes are another class: 'fast' takes them
    qm, km, vm = _qkv(hkv=4)
    sel.forward(qm, km, vm, scale=0.25, causal=False)
    assert sel.chosen(qm, km, False) == "fast"
    # a change of SDPA flags: no choice carries over; choosing happens again
    fake.flags = (True, False)
    assert sel.chosen(q, k, False) is None and sel.choose(q, k, False) == "fast"
    fake.calls.clear()
    sel.forward(q, k, v, scale=0.25, causal=False)
    assert fake.calls == ["fast", "reference"] and sel.chosen(q, k, False) == "reference"
    assert len(sel.report()) == 3
    # back to the old flags: the old choice is still right for them
    fake.flags = (True, True)
    assert sel.chosen(q, k, False) == "slow"
    sel.reset()
    assert sel.report() == [] and sel.chosen(q, k, False) is None


def test_selector_follows_the_real_sdpa_flags():
    """The process selector's key includes torch's SDPA flags (not a mock)."""
    q, k, v = _qkv()
    SELECTOR.reset()
    seqpar.kernels.block_forward(q, k, v, scale=0.25, causal=False)
    assert SELECTOR.chosen(q, k, False) == "reference"
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(not was)
    try:
        assert SELECTOR.chosen(q, k, False) is None
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
    assert SELECTOR.chosen(q, k, False) == "reference"
    SELECTOR.reset()


def test_default_candidates():
    q, k, _ = _qkv()
    assert default_candidates(q, k, (True, True)) == ["reference"]  # CPU
    qc, kc = q.to(torch.bfloat16), k.to(torch.bfloat16)
    # candidates are decided from the device/dtype only, so a meta tensor stands in for CUDA
    qm = torch.empty(qc.shape, dtype=torch.bfloat16, device="meta")
    assert default_candidates(qm, kc, (True, True)) == ["reference"]  # not CUDA
    class CudaLike:  # noqa: E306 - the attributes default_candidates reads
        is_cuda, dtype, shape = True, torch.bfloat16, qc.shape
    assert default_candidates(CudaLike, kc, (True, True)) == [
        "cudnn", "cudnn-repeat-kv", "flash", "reference"]
    assert default_candidates(CudaLike, qc, (False, True)) == ["flash", "reference"]
