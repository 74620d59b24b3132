"""Tiled MLP: outputs and every gradient equal the untiled module; one tile of
intermediates at a time; FSDP2 (2 gloo ranks) gives the same gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from seqpar.memory.measure import LivePeak
from seqpar.memory.tiled_mlp import apply_tiled_mlp, tile_module, tiled_forward
from seqpar.models import FeedForward, build_model, model_config


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _ffn(mlp="swiglu", dtype=torch.float64, ffn_dim=176):
    torch.manual_seed(0)
    cfg = model_config("tiny", mlp=mlp, ffn_dim=ffn_dim)
    return FeedForward(cfg).to(dtype)


def _grads(module, x, out):
    torch.manual_seed(1)
    g = torch.randn_like(out)
    params = list(module.parameters())
    return torch.autograd.grad(out, [x, *params], g)


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_matches_untiled_float64(mlp):
    ref_mod = _ffn(mlp)
    x = torch.randn(2, 37, 64, dtype=torch.float64, requires_grad=True)
    ref = ref_mod(x)
    ref_g = _grads(ref_mod, x, ref)
    for tile in (1, 5, 16, 37, 50):
        mod = tile_module(copy.deepcopy(ref_mod), tile)
        out = mod(x)
        assert _rel(out, ref) < 1e-12, tile
        for got, want in zip(_grads(mod, x, out), ref_g, strict=True):
            assert _rel(got, want) < 1e-12, tile


def test_grads_accumulate_across_calls_and_tiles():
    ref_mod, mod = _ffn(), tile_module(_ffn(), 4)
    x = torch.randn(1, 23, 64, dtype=torch.float64)
    for m in (ref_mod, mod):
        for scale in (1.0, -0.5):
            (scale * m(x.requires_grad_()).square().sum()).backward()
    for (name, p), q in zip(ref_mod.named_parameters(), mod.parameters(), strict=True):
        assert _rel(q.grad, p.grad) < 1e-12, name


def test_whole_model_with_checkpointing_and_autocast():
    """tiny decoder, every MLP tiled at 7 tokens, blocks checkpointed: loss and every
    parameter gradient equal the plain model (fp64), and bf16 autocast stays close."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    ref = build_model("tiny").double()
    tiled = copy.deepcopy(ref)
    apply_tiled_mlp(tiled, 7)
    for block in tiled.layers:
        inner = block.forward
        block.forward = (lambda *a, _f=inner, **kw: checkpoint(_f, *a, use_reentrant=False, **kw))
    tokens = torch.randint(0, 264, (2, 30))
    pos = torch.arange(30)
    for model in (ref, tiled):
        model(tokens, pos).double().square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), tiled.parameters(), strict=True):
        assert _rel(q.grad, p.grad) < 1e-10, name
    ref.float(), tiled.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ref(tokens, pos).float(), tiled(tokens, pos).float()
    assert _rel(b, a) < 2e-2


def test_one_tile_of_intermediates():
    """Forward saves x and the parameters only (no (L, ffn) tensor), and the measured
    backward peak (live tensor bytes) stays far below the untiled module's."""
    length, ffn, tile = 4096, 1024, 256
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    mod = tile_module(_ffn(ffn_dim=ffn), tile)
    x = torch.randn(1, length, 64, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = mod(x)
    assert max(saved) <= max(x.numel(), 64 * ffn), saved

    def peak(m):
        with LivePeak() as tracker:
            m(x).sum().backward()
        return tracker.peak

    untiled, tiled = peak(_ffn(ffn_dim=ffn)), peak(mod)
    one = length * ffn * 8  # one (L, ffn) fp64 intermediate of the untiled module
    assert untiled >= 3 * one and tiled < one, (untiled, tiled, one)
    del out


def test_bad_input():
    with pytest.raises(ValueError, match="tile must be a positive"):
        tile_module(_ffn(), 0)
    with pytest.raises(ValueError, match="already tiled"):
        tile_module(tile_module(_ffn(), 4), 4)
    with pytest.raises(ValueError, match="tile must be a positive"):
        tiled_forward(lambda t: t, torch.zeros(2, 3), -1, [])
    model = build_model("tiny")
    model.layers[1].feed_forward.w2.sequence_parallel = True  # what RowParallelLinear has
    with pytest.raises(ValueError, match="layer 1's MLP is tensor-parallel"):
        apply_tiled_mlp(model, 8)


def _fsdp(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    ref = build_model("tiny")
    tiled = copy.deepcopy(ref)
    apply_tiled_mlp(tiled, 5)
    grads = []
    torch.manual_seed(10 + rank)  # each rank its own tokens: FSDP sums their gradients
    tokens = torch.randint(0, 264, (1, 24))
    for model in (ref, tiled):
        for unit in [*model.layers, model]:
            fully_shard(unit, mesh=mesh)
        model(tokens, torch.arange(24)).square().mean().backward()
        grads.append({n: p.grad.full_tensor() for n, p in model.named_parameters()})
    for name, want in grads[0].items():
        assert _rel(grads[1][name], want) < 1e-5, name
    dist.barrier()


def test_fsdp2_two_ranks(spawn):
    spawn(_fsdp, 2)
