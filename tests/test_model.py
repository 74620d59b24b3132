"""The plain model: named sizes, config checks, shapes, RoPE, causality, injected
attention and documents as a forward argument (no process group)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import seqpar
from seqpar.data import (
    ByteTokenizer,
    TextDataset,
)
from seqpar.models import SIZES, ModelConfig, build_model, model_config
from seqpar.parallel import ParallelDims


def test_named_sizes():
    c8 = model_config("8b")
    assert (c8.dim, c8.n_layers, c8.n_heads, c8.n_kv_heads, c8.ffn_dim) == (4096, 32, 32, 8, 14336)
    assert not c8.tie_embeddings and c8.causal
    assert model_config("tiny").tie_embeddings
    assert not model_config("bert-base").causal
    # Llama-3-8B has 8.03B parameters with its 128256-token vocabulary
    assert abs(model_config("8b", vocab_size=128256).num_params() / 1e9 - 8.03) < 0.01
    for name in SIZES:
        model_config(name)
    with pytest.raises(ValueError, match="unknown model size"):
        model_config("huge")


def test_model_config_validation():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=3, ffn_dim=8)


def test_model_never_imports_torch_distributed():
    src = Path(seqpar.__file__).parent / "models"
    for f in src.glob("*.py"):
        code = f.read_text()
        assert "import torch.distributed" not in code and "from torch.distributed" not in code, f


@pytest.mark.parametrize("name", ["tiny", "bert-tiny"])
def test_forward_shapes_and_param_count(name):
    torch.manual_seed(0)
    model = build_model(name)
    tokens = torch.randint(0, 256, (2, 24))
    logits = model(tokens, torch.arange(24))
    assert logits.shape == (2, 24, model.cfg.vocab_size)
    assert sum(p.numel() for p in model.parameters()) == model.cfg.num_params()


def test_rope_uses_relative_global_positions():
    """Shifting every position by a constant changes nothing (RoPE is relative), while
    other positions do: the model really uses the position ids it is given."""
    torch.manual_seed(0)
    model = build_model("tiny").double()
    tokens = torch.randint(0, 256, (1, 16))
    base = model(tokens, torch.arange(16))
    shifted = model(tokens, torch.arange(16) + 1000)
    torch.testing.assert_close(base, shifted, rtol=0, atol=1e-6)  # fp32 tables
    other = model(tokens, torch.arange(16) * 2)
    assert (base - other).abs().max() > 1e-4


def test_decoder_is_causal_encoder_is_not():
    torch.manual_seed(0)
    for name, causal in (("tiny", True), ("bert-tiny", False)):
        model = build_model(name).double()
        a = torch.randint(0, 256, (1, 12))
        b = a.clone()
        b[0, -1] = (b[0, -1] + 1) % 256
        pos = torch.arange(12)
        diff = (model(a, pos)[0, :-1] - model(b, pos)[0, :-1]).abs().max()
        assert (diff == 0) == causal, name


def test_attention_is_injected():
    torch.manual_seed(0)
    model = build_model("tiny")
    calls = []

    def attn(q, k, v, causal):
        calls.append((tuple(q.shape), tuple(k.shape), causal))
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    model.set_attention(attn)
    model(torch.randint(0, 256, (3, 8)), torch.arange(8))
    assert calls == [((3, 4, 8, 16), (3, 2, 8, 16), True)] * 2


def test_packed_documents_do_not_see_each_other():
    """With cu_seqlens, changing document 1 leaves document 2's outputs unchanged."""
    from seqpar.parallel import parallelize

    torch.manual_seed(0)
    model = build_model("tiny").double()
    par = parallelize(model, ParallelDims(layout="contiguous"))
    eos = ByteTokenizer.EOS
    a = torch.tensor([[5, 6, 7, eos, 9, 10, 11, 12], [1, 2, eos, 4, 5, 6, 7, eos]])
    b = a.clone()
    b[:, 0] = 42  # inside the first document of each row
    docs = TextDataset.cu_seqlens(a)
    assert [d.tolist() for d in docs] == [[0, 4, 8], [0, 3, 8]]
    pos = torch.arange(8)
    out_a, out_b = par.model(a, pos, documents=docs), par.model(b, pos, documents=docs)
    assert torch.equal(out_a[0, 4:], out_b[0, 4:]) and torch.equal(out_a[1, 3:], out_b[1, 3:])
    assert not torch.equal(par.model(a, pos)[0, 4:], par.model(b, pos)[0, 4:])


def test_documents_are_a_forward_argument_of_the_plain_model():
    """The unparallelized model (local SDPA) keeps documents apart too: a packed
    document's logits equal those of the document run on its own (RoPE is relative),
    with and without activation checkpointing, and nothing is left on the modules."""
    from seqpar.parallel import apply_activation_checkpointing

    eos = ByteTokenizer.EOS
    a = torch.tensor([[5, 6, 7, eos, 9, 10, 11, 12], [1, 2, eos, 4, 5, 6, 7, eos]])
    docs = TextDataset.cu_seqlens(a)
    pos = torch.arange(8)
    for name in ("tiny", "bert-tiny"):
        torch.manual_seed(0)
        model = build_model(name).double()
        packed = model(a, pos, documents=docs)
        alone = model(a[:1, 4:], pos[4:])
        torch.testing.assert_close(packed[:1, 4:], alone, rtol=1e-10, atol=1e-10)
        tokens = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
        grads = []
        for ckpt in (False, True):
            torch.manual_seed(0)
            m = build_model(name).double()
            if ckpt:
                apply_activation_checkpointing(m)
            m(tokens, pos, documents=[torch.tensor([0, 3, 8])]).sum().backward()
            grads.append(m.layers[0].attention.wq.weight.grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="2 entries for a batch of 1"):
        model(a[:1], pos, documents=docs)
