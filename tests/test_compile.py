"""``--compile`` (seqpar.parallel.compile): compiled blocks give the eager losses and
gradients, attention stays out of the graph, unsupported settings are refused.

Kept small: compiling on CPU (inductor's C++ backend) takes a minute or two on a busy
machine, so inductor compiles one tiny two-step run (selective checkpointing, the GPU
default at long lengths); without checkpointing the same run uses the ``aot_eager``
backend (dynamo + AOT autograd, the same graphs and breaks, no code generation).
Tolerance: fp32 reductions fused by inductor reassociate (~3e-5 relative seen)."""

from __future__ import annotations

import functools
import time

import pytest
import torch

import seqpar.parallel.compile as compile_mod
from seqpar.models import build_model, model_config
from seqpar.parallel import ParallelDims, parallelize
from seqpar.parallel.compile import EagerAttention, apply_compile, check_compile
from seqpar.train import TrainConfig, train


def _grads(step, par, into):
    if step == 1:
        into.update({n: p.grad.detach().clone() for n, p in par.model.named_parameters()})


@pytest.mark.parametrize("ac,backend", [("none", "aot_eager"), ("selective", "inductor")])
def test_compiled_training_matches_eager(ac, backend, monkeypatch):
    monkeypatch.setattr(compile_mod, "apply_compile",
                        functools.partial(apply_compile, backend=backend))
    kw = dict(seq_len=64, batch_size=2, steps=2, warmup=1, log_every=100, lr=1e-2,
              activation_checkpointing=ac, loss_chunk=32 if ac == "selective" else 0)
    eager_g: dict = {}
    eager = train(TrainConfig(**kw).resolve(1, cuda=False), quiet=True,
                  on_gradients=lambda s, p: _grads(s, p, eager_g))
    t0 = time.perf_counter()
    comp_g: dict = {}
    compiled = train(TrainConfig(compile=True, **kw).resolve(1, cuda=False), quiet=True,
                     on_gradients=lambda s, p: _grads(s, p, comp_g))
    print(f"compiled run ({ac}, {backend}): {time.perf_counter() - t0:.1f} s")
    for a, b in zip(compiled.losses, eager.losses, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (compiled.losses, eager.losses)
    assert eager_g.keys() == comp_g.keys() and eager_g
    for name, g in eager_g.items():  # the second step's gradients (after one update)
        err = (comp_g[name] - g).abs().max().item()
        assert err <= 2e-4 * max(g.abs().max().item(), 1e-6), (name, err)


def test_attention_stays_eager_and_names_are_kept():
    """One compilation serves every block (graphs do not grow with the layers)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = build_model(model_config("tiny", n_layers=5))
    names = [n for n, _ in model.named_parameters()]
    calls = []

    def attn(q, k, v, causal, **kw):
        calls.append(torch.compiler.is_compiling())
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                enable_gqa=True)

    model.set_attention(attn)
    apply_compile(model, backend="eager")  # dynamo only: fast, same graph breaks
    assert all(isinstance(b.attention.attn_fn, EagerAttention) for b in model.layers)
    model(torch.randint(0, 264, (1, 16)), torch.arange(16))
    assert calls == [False] * 5  # called once per layer, never while tracing
    # the block's code before and after the attention break: graphs do not scale with layers
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    assert [n for n, _ in model.named_parameters()] == names
    with pytest.raises(ValueError, match="already compiled"):
        apply_compile(model, backend="eager")


def test_refusals():
    with pytest.raises(ValueError, match="--compile needs tp=1"):
        check_compile(2)
    model = build_model("tiny")
    parallelize(model, ParallelDims(), activation_checkpointing="full")
    with pytest.raises(ValueError, match="already wrapped"):
        apply_compile(model)
