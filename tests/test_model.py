"""Model, data, loss, ParallelDims and CLI checks that need no process group."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import seqpar
from seqpar.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    KVRetrieval,
    Passkey,
    TextDataset,
    make_dataset,
    shard_batch,
)
from seqpar.models import SIZES, ModelConfig, build_model, model_config
from seqpar.parallel import ParallelDims
from seqpar.train import TrainConfig, sp_exact_loss
from seqpar.train.cli import load_toml, main, parse_config
from seqpar.train.loop import lr_at


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


def test_passkey_task_answers_are_in_context():
    task = Passkey(128)
    tokens, labels = task.batch(step=3, batch_size=4, seed=1)
    again, _ = task.batch(step=3, batch_size=4, seed=1)
    assert torch.equal(tokens, again)
    assert not torch.equal(tokens, task.batch(step=4, batch_size=4, seed=1)[0])
    for b in range(4):
        where = (labels[b] != IGNORE_INDEX).nonzero().flatten()
        assert len(where) == task.n_slots
        for t in where.tolist():
            slot = tokens[b, t].item() - 1
            answer = labels[b, t].item()
            assert (answer - 128) // task.n_values == slot
            assert tokens[b, t + 1] == answer  # decoder: the answer follows its query
            hidden = (tokens[b, : task.seq_len // 2] == answer).nonzero().flatten()
            assert len(hidden) == task.copies  # only in the first half, `copies` times
            assert (tokens[b, task.seq_len // 2: t] == answer).sum() == 0


def test_kv_task_and_encoder_masking():
    task = KVRetrieval(96, arch="encoder")
    tokens, labels = task.batch(0, 2, 0)
    mask = labels != IGNORE_INDEX
    assert mask.sum() == 2 * task.n_queries
    assert (tokens[mask] == ByteTokenizer.MASK).all()
    with pytest.raises(ValueError, match="too short"):
        KVRetrieval(10)


def test_byte_tokenizer_and_text_dataset(tmp_path):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("héllo ∑", bos=True, eos=True)) == "héllo ∑"
    (tmp_path / "a.txt").write_text("the quick brown fox " * 20)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "jumps over"}) + "\n\n"
                                      + json.dumps({"text": "the lazy dog"}) + "\n")
    ds = make_dataset(f"{tmp_path / 'a.txt'},{tmp_path / 'b.jsonl'}", seq_len=32)
    assert isinstance(ds, TextDataset)
    tokens, labels = ds.batch(0, 3, seed=0)
    assert tokens.shape == labels.shape == (3, 32)
    assert torch.equal(tokens[:, 1:], labels[:, :-1])  # shifted on the global sequence
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match="not JSON"):
        TextDataset([tmp_path / "bad.jsonl"], 8)


def test_shard_batch_single_rank_and_tp_chunks():
    tokens = torch.arange(32).view(2, 16)
    one = shard_batch(tokens, tokens, layout="zigzag")
    assert torch.equal(one.tokens, tokens) and torch.equal(one.position_ids, torch.arange(16))
    parts = [shard_batch(tokens, tokens, dp=2, dp_rank=d, tp=2, tp_rank=t)
             for d in range(2) for t in range(2)]
    assert torch.equal(torch.cat([parts[0].tokens, parts[1].tokens], 1), tokens[:1])
    assert torch.equal(parts[3].position_ids, torch.arange(8, 16))


def test_sp_exact_loss_one_process_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 10, 7)
    labels = torch.randint(0, 7, (2, 10))
    labels[0, :4] = IGNORE_INDEX
    out = sp_exact_loss(logits, labels)
    ref = F.cross_entropy(logits.view(-1, 7), labels.view(-1), ignore_index=IGNORE_INDEX)
    assert math.isclose(out.loss, ref.item(), rel_tol=1e-6)
    assert torch.allclose(out.backward_loss, ref)
    assert out.tokens == 16


def test_parallel_dims_errors_list_every_degree():
    with pytest.raises(ValueError) as err:
        ParallelDims(dp=2, sp=3, tp=2).validate(8)
    msg = str(err.value)
    assert all(s in msg for s in ("dp=2", "sp=3", "tp=2", "12", "world size 8"))
    cfg = model_config("tiny")
    with pytest.raises(ValueError, match="n_kv_heads=2 is not divisible by tp=4"):
        ParallelDims(sp=1, tp=4).validate(4, model=cfg)
    with pytest.raises(ValueError, match="splits heads 8 ways"):
        ParallelDims(sp=8, strategy="ulysses").validate(8, model=cfg)
    with pytest.raises(ValueError, match="divisible by 8"):
        ParallelDims(sp=4, layout="zigzag").validate(4, seq_len=100)
    with pytest.raises(ValueError, match="batch_size=3"):
        ParallelDims(dp=2, sp=2).validate(4, batch_size=3)
    with pytest.raises(ValueError, match="unknown strategy"):
        ParallelDims(strategy="magic").validate(1)
    with pytest.raises(ValueError, match="hybrid"):
        ParallelDims(sp=4, strategy="hybrid", ulysses=2, ring=3).validate(4)
    ParallelDims(dp=2, sp=2, tp=1, layout="zigzag").validate(4, model=cfg, seq_len=64,
                                                            batch_size=4)


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_toml_config_and_command_line_precedence(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "tiny"\nseq-len = 256\nsteps = 7\n[train]\nlr = 0.5\n')
    cfg = parse_config(["--config", str(path), "--steps", "9", "--no-fsdp", "--resume"])
    assert (cfg.seq_len, cfg.steps, cfg.lr, cfg.fsdp, cfg.resume) == (256, 9, 0.5, False, True)
    (tmp_path / "bad.toml").write_text("sequence_length = 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_toml(tmp_path / "bad.toml")


@pytest.mark.parametrize("argv, needle", [
    (["--sp", "3", "--seq-len", "100", "--nproc", "3"], "divisible by 6"),
    (["--dp", "2", "--sp", "2", "--tp", "2", "--nproc", "4"], "world size 4"),
    (["--strategy", "ulysses", "--sp", "8"], "ulysses"),
    (["--strategy", "hybrid", "--sp", "4", "--ulysses", "3"], "ulysses*ring == sp"),
    (["--tp", "4", "--sp", "1", "--nproc", "4"], "not divisible by tp=4"),
    (["--model", "nope"], "unknown model size"),
])
def test_cli_rejects_bad_configs_before_spawning(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_packed_documents_do_not_see_each_other():
    """With cu_seqlens, changing document 1 leaves document 2's outputs unchanged."""
    from seqpar.parallel import ParallelDims, parallelize

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
