"""Built-in data: the synthetic tasks, the byte tokenizer and text, per-rank sharding,
and the SP-exact loss in one process."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from seqpar.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    KVRetrieval,
    Passkey,
    TextDataset,
    make_dataset,
    shard_batch,
)
from seqpar.train import sp_exact_loss


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
