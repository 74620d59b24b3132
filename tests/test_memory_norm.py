"""The lean RMSNorm (``seqpar.memory.norm``): RMSNorm's values and gradients (both compute
in fp32 whatever the input dtype, so float64 agrees to fp32 rounding), with only
its input and weight saved for backward (``--mlp-chunk`` applies it; the training
parity grid of tests/test_train_memory.py covers it end to end)."""

from __future__ import annotations

import pytest
import torch

from seqpar.memory.norm import LeanRMSNorm, apply_lean_norm
from seqpar.models import RMSNorm, build_model


def _saved_bytes(fn) -> int:
    total = []

    def pack(t):
        total.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-6),
                                        (torch.bfloat16, 0.0)])
def test_same_values_and_gradients(dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 48, generator=g).to(dtype)
    dout = torch.randn(2, 37, 48, generator=g).to(dtype)
    ref, lean = RMSNorm(48), LeanRMSNorm(48)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(48, generator=g) + 0.5)
        lean.weight.copy_(ref.weight)
    ref, lean = ref.to(dtype), lean.to(dtype)
    outs = []
    for m in (ref, lean):
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.backward(dout)
        outs.append((out.detach(), xi.grad, m.weight.grad))
    for name, a, b in zip(("out", "dx", "dweight"), *outs):
        err = ((a.double() - b.double()).norm() / b.double().norm()).item()
        if dtype == torch.bfloat16 and name == "out":
            assert torch.equal(a, b)  # same forward arithmetic
        elif dtype == torch.bfloat16:
            assert err < 1e-2, (name, err)
        else:
            assert err <= tol, (name, err)


def test_saves_only_its_input():
    x = torch.randn(4, 1024, 64, dtype=torch.bfloat16, requires_grad=True)
    ref, lean = RMSNorm(64).bfloat16(), LeanRMSNorm(64).bfloat16()
    full = _saved_bytes(lambda: ref(x))
    small = _saved_bytes(lambda: lean(x))
    assert small == x.numel() * 2 + 64 * 2  # x (bf16) and the weight
    assert full >= x.numel() * 8  # fp32 x and fp32 normalized at least


def test_apply_lean_norm_keeps_names():
    model = build_model("tiny")
    names = [n for n, _ in model.named_parameters()]
    assert apply_lean_norm(model) == 2 * model.cfg.n_layers + 1
    assert [n for n, _ in model.named_parameters()] == names
    assert all(type(m) is not RMSNorm for m in model.modules())
    assert apply_lean_norm(build_model("bert-tiny")) == 0  # LayerNorm: untouched
