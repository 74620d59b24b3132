"""Checkpointing modes give the same outputs and gradients as no checkpointing;
selective runs attention once; offload really keeps block inputs off the compute
tensors (counted through its hooks, and the device storages are freed)."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
import torch.distributed as dist

import seqpar
from seqpar.memory.checkpointing import (
    KeptAttention,
    apply_activation_checkpointing,
    layer_modes,
)
from seqpar.memory.offload import ActivationOffload
from seqpar.models import build_model, sdpa_attention

CASES = [("none", None), ("full", None), ("selective", None), ("offload", None),
         ("selective", 1), ("full", 2), ("offload", 0)]


class _Counting:
    """An attention callable that counts its calls (and carries a cu_seqlens slot)."""

    def __init__(self, inner=sdpa_attention):
        self.inner, self.calls, self.cu_seqlens = inner, 0, None

    def __call__(self, q, k, v, causal):
        self.calls += 1
        return self.inner(q, k, v, causal)


def _run(model, tokens, pos):
    out = model(tokens, pos)
    loss = out.double().square().mean()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_modes_equal_no_checkpointing(dtype):
    torch.manual_seed(0)
    base = build_model("tiny", n_layers=3).to(dtype)
    tokens, pos = torch.randint(0, 264, (2, 24)), torch.arange(24)
    ref_out, ref_grads = _run(copy.deepcopy(base), tokens, pos)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for mode, k in CASES:
        model = copy.deepcopy(base)
        counter = _Counting()
        model.set_attention(counter)
        off = apply_activation_checkpointing(model, mode, offload_layers=k,
                                             offload=ActivationOffload(min_bytes=0))
        out, grads = _run(model, tokens, pos)
        assert (out - ref_out).abs().max() <= tol * ref_out.abs().max(), (mode, k)
        for name, g in ref_grads.items():
            assert (grads[name] - g).abs().max() <= tol * g.abs().max(), (mode, k, name)
        modes = layer_modes(3, mode, k)
        recomputed = sum(m in ("full", "offload") for m in modes)
        assert counter.calls == 3 + recomputed, (mode, k, counter.calls)
        n_off = modes.count("offload")
        assert (off is None) == (n_off == 0)
        if off is not None:  # one (B, L, d) block input per offloaded layer, each back once
            assert off.stats.packed == off.stats.unpacked == n_off
            assert off.stats.packed_bytes == n_off * 2 * 24 * 64 * base.output.weight.itemsize
            assert off.stats.prefetched == n_off - 1


def _block_input_storages(model):
    refs = []
    for block in model.layers:
        block.register_forward_pre_hook(
            lambda _m, args: refs.append(weakref.ref(args[0].untyped_storage())))
    return refs


def test_offload_frees_block_inputs():
    """After forward, full checkpointing still holds every block input; offload
    holds none on the compute side (host copies are separate buffers)."""
    torch.manual_seed(0)
    base = build_model("tiny", n_layers=3).double()
    tokens, pos = torch.randint(0, 264, (1, 32)), torch.arange(32)
    alive = {}
    for mode in ("full", "offload"):
        model = copy.deepcopy(base)
        off = apply_activation_checkpointing(model, mode, offload=ActivationOffload(min_bytes=0))
        refs = _block_input_storages(model)
        out = model(tokens, pos)
        alive[mode] = [r() is not None for r in refs]
        out.sum().backward()
        if off is not None:
            assert off.stats.unpacked == 3 and off.stats.kept == 0
    assert alive == {"full": [True] * 3, "offload": [False] * 3}


def test_attribute_passthrough_and_bad_input():
    model = build_model("tiny")
    counter = _Counting()
    model.set_attention(counter)
    apply_activation_checkpointing(model, "selective")
    model(torch.randint(0, 264, (1, 8)), torch.arange(8)).sum().backward()
    wrapped = model.layers[0].attention.attn_fn
    assert isinstance(wrapped, KeptAttention)
    wrapped.cu_seqlens = [torch.tensor([0, 8])]  # what Parallelized.set_documents does
    assert counter.cu_seqlens is not None and wrapped.cu_seqlens is counter.cu_seqlens
    with pytest.raises(ValueError, match="already checkpointed"):
        apply_activation_checkpointing(model, "full")
    with pytest.raises(ValueError, match="choose one of"):
        layer_modes(2, "some")
    with pytest.raises(ValueError, match=r"offload_layers=3 must be in \[0, 2\]"):
        apply_activation_checkpointing(build_model("tiny"), "full", offload_layers=3)


def _ring(rank, world):
    """Ring attention over 2 gloo ranks (collectives inside the checkpointed block):
    every mode's gradients equal no checkpointing's."""
    from seqpar.parallel.parallelize import SequenceParallelAttention

    group = dist.group.WORLD
    torch.manual_seed(0)
    base = build_model("tiny", n_layers=2).double()
    length = 32
    tokens = torch.randint(0, 264, (1, length))
    local = seqpar.shard(tokens, dim=1, group=group, layout="zigzag")
    pos = seqpar.position_ids(length, group=group, layout="zigzag")
    results = []
    for mode, k in [("none", None), ("full", None), ("selective", None), ("offload", 1)]:
        model = copy.deepcopy(base)
        model.set_attention(SequenceParallelAttention("ring", group, "zigzag"))
        apply_activation_checkpointing(model, mode, offload_layers=k,
                                       offload=ActivationOffload(min_bytes=0))
        out = model(local, pos)
        out.square().mean().backward()
        results.append([p.grad for p in model.parameters()])
    for grads in results[1:]:
        for g, want in zip(grads, results[0], strict=True):
            assert (g - want).abs().max() <= 1e-12 * want.abs().max()


def test_ring_attention_two_ranks(spawn):
    spawn(_ring, 2)


def test_modes_with_tiled_mlp_and_chunked_loss():
    """All options together (float64): selective / offload+full checkpointing, tiled
    MLP and the chunked loss give the plain model's loss and gradients."""
    import torch.nn.functional as F

    from seqpar.memory.chunked_loss import chunked_sp_exact_loss
    from seqpar.memory.tiled_mlp import apply_tiled_mlp

    torch.manual_seed(0)
    base = build_model("tiny", n_layers=3).double()
    tokens, pos = torch.randint(0, 264, (2, 24)), torch.arange(24)
    labels = torch.randint(0, 264, (2, 24))

    def run(model, chunk):
        h = model.tok_embeddings(tokens)
        rope = model.rope(pos)
        for block in model.layers:
            h = block(h, rope)
        h = model.norm(h)
        if chunk:
            loss = chunked_sp_exact_loss(h, model.output.weight, labels, None, chunk
                                         ).backward_loss
        else:  # float64 dense reference (sp_exact_loss computes in fp32)
            loss = F.cross_entropy(model.output(h).flatten(0, 1), labels.flatten())
        loss.backward()
        return loss.item(), [p.grad for p in model.parameters()]

    ref_loss, ref_grads = run(copy.deepcopy(base), 0)
    for mode, k in [("selective", None), ("full", 2), ("offload", None)]:
        model = copy.deepcopy(base)
        apply_tiled_mlp(model, 5)
        apply_activation_checkpointing(model, mode, offload_layers=k,
                                       offload=ActivationOffload(min_bytes=0))
        loss, grads = run(model, 7)
        assert abs(loss - ref_loss) <= 1e-10 * abs(ref_loss), mode
        for g, want in zip(grads, ref_grads, strict=True):
            assert (g - want).abs().max() <= 1e-10 * want.abs().max(), mode
