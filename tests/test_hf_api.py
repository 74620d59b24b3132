"""seqpar.hf in one process: batch sharding rules, padding, and every refusal.

One process is a group of one, so ``seqpar.attention`` runs its planner without
communication; the distributed parity lives in test_hf_parity.py.
"""

from __future__ import annotations

import pytest
import torch
from test_hf_parity import VOCAB, tiny_config
from transformers import AutoModelForCausalLM, BertConfig, GPT2Config

import seqpar.hf


def _model(family="llama", attn="seqpar", seed=0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, **overrides),
                                            attn_implementation=attn)


def test_shift_labels_and_documents():
    ids = torch.arange(8).view(1, 8) + 10
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]])
    assert seqpar.hf.shift_labels(ids).tolist() == [[11, 12, 13, 14, 15, 16, 17, -100]]
    # a document's last token does not predict the next document's first
    assert seqpar.hf.shift_labels(ids, pos).tolist() == [[11, 12, -100, 14, -100, 16, 17, -100]]
    assert seqpar.hf.shift_labels(ids, pos, mask_document_ends=False)[0, 2] == 13
    cu = seqpar.hf.cu_seqlens_from_position_ids(torch.cat([pos, torch.arange(8)[None]]))
    assert [c.tolist() for c in cu] == [[0, 3, 5, 8], [0, 8]]
    assert seqpar.hf.cu_seqlens_from_position_ids(torch.arange(8)[None]) is None
    # HF's rule: any position that is not its predecessor + 1 starts a document
    assert seqpar.hf.cu_seqlens_from_position_ids(torch.tensor([[0, 1, 5, 6]]))[0].tolist() \
        == [0, 2, 4]


def test_shard_batch_one_rank_kwargs():
    ids = torch.randint(0, VOCAB, (2, 8))
    b = seqpar.hf.shard_batch(ids, layout="zigzag")
    assert b.position_ids.tolist() == [list(range(8))] * 2 and b.cu_seqlens is None
    kw = b.model_kwargs()
    assert set(kw) == {"input_ids", "position_ids", "use_cache"} and kw["use_cache"] is False
    packed = seqpar.hf.shard_batch(ids, position_ids=torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    assert seqpar.hf.CU_SEQLENS_KWARG in packed.model_kwargs()
    assert packed.labels[0, 3] == -100 and packed.labels[0, 2] == ids[0, 3]
    moved = packed.to("cpu")
    assert torch.equal(moved.labels, packed.labels) and moved.cu_seqlens is packed.cu_seqlens


def test_padding_keeps_loss_and_gradients():
    """L=15 cannot be split by zigzag (granule 2 on one rank): an error, or pad=True,
    which must give the unpadded dense model's loss and gradients."""
    ids = torch.randint(0, VOCAB, (2, 15), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"multiples of 2, got L=15 \(next: 16\)"):
        seqpar.hf.shard_batch(ids, layout="zigzag")
    ref = _model(attn="sdpa")
    ref(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    model = seqpar.hf.apply(_model(), strategy="ring", layout="zigzag")
    batch = seqpar.hf.shard_batch(ids, layout="zigzag", pad=True)
    assert batch.input_ids.shape == (2, 16) and batch.cu_seqlens[0].tolist() == [0, 15, 16]
    out = seqpar.hf.loss(model(**batch.model_kwargs()).logits, batch.labels)
    out.backward_loss.backward()
    want = ref(input_ids=ids, labels=ids, use_cache=False).loss.item()
    assert abs(out.loss - want) <= 1e-6 * want and out.tokens == 2 * 14
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_unsupported_architectures_named():
    with pytest.raises(ValueError, match=r"'llama', 'mistral', 'qwen2', 'qwen3'.*'bert'"):
        seqpar.hf.check_supported(BertConfig())
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=4))
    with pytest.raises(ValueError, match=r"model_type='gpt2'"):
        seqpar.hf.apply(gpt2)
    with pytest.raises(ValueError, match="unknown strategy 'flash'"):
        seqpar.hf.apply(_model(), strategy="flash")


def test_unconfigured_model_refuses_to_run():
    """attn_implementation="seqpar" without apply() is an error, not dense attention."""
    with pytest.raises(ValueError, match=r"seqpar.hf.apply\(model"):
        _model()(input_ids=torch.zeros(1, 8, dtype=torch.long))


def test_sliding_window_exact_only_within_the_window():
    ids = torch.randint(0, VOCAB, (1, 16))
    # the window covers the whole sequence: exact, equals the dense model
    model = seqpar.hf.apply(_model("mistral", sliding_window=16))
    ref = _model("mistral", attn="sdpa", sliding_window=16)
    got = model(**seqpar.hf.shard_batch(ids).model_kwargs()).logits
    torch.testing.assert_close(got, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    short = seqpar.hf.apply(_model("mistral", sliding_window=8))
    with pytest.raises(ValueError, match="sliding window 8 < sequence length 16"):
        short(**seqpar.hf.shard_batch(ids).model_kwargs())


def test_inexact_requests_refused():
    ids = torch.randint(0, VOCAB, (1, 8))
    model = seqpar.hf.apply(_model(attention_dropout=0.1))
    kw = seqpar.hf.shard_batch(ids).model_kwargs()
    model.eval()
    model(**kw)  # dropout is off in eval
    model.train()
    with pytest.raises(ValueError, match="attention dropout 0.1"):
        model(**kw)
    model = seqpar.hf.apply(_model())
    with pytest.raises(ValueError, match="padding attention_mask"):
        model(**kw, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]]))
    model(**kw, attention_mask=torch.ones(1, 8, dtype=torch.long))  # no padding: fine
    with pytest.raises(ValueError, match="takes no attention_mask"):
        model(**kw, attention_mask=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="GLOBAL document boundaries"):
        model(**kw, cu_seq_lens_q=torch.tensor([0, 8]), cu_seq_lens_k=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="2 entries for a batch of 1"):
        model(**kw, seqpar_cu_seqlens=[torch.tensor([0, 8])] * 2)


def test_bad_batch_shapes():
    ids = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels shape \(2, 7\)"):
        seqpar.hf.shard_batch(ids, ids[:, :7])
    with pytest.raises(ValueError, match=r"position_ids must be.*got \(3, 8\)"):
        seqpar.hf.shard_batch(ids, position_ids=torch.zeros(3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be \(B, L\)"):
        seqpar.hf.shard_batch(ids[0])


def test_saved_model_reloads_without_seqpar(tmp_path):
    """The group lives outside the config: a model saved under seqpar reloads anywhere."""
    model = seqpar.hf.apply(_model())
    model.save_pretrained(tmp_path)
    assert "seqpar" not in (tmp_path / "config.json").read_text()
    again = AutoModelForCausalLM.from_pretrained(tmp_path)  # the default attention
    assert again.config._attn_implementation != "seqpar"
    ids = torch.randint(0, VOCAB, (1, 8))
    torch.testing.assert_close(again(input_ids=ids).logits,
                               model(**seqpar.hf.shard_batch(ids).model_kwargs()).logits,
                               rtol=1e-5, atol=1e-6)


def _word_tokenizer(n_words: int):
    """A tokenizer built in-test (no download): one id per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(n_words)}
    vocab["[UNK]"] = n_words
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_model_folder_checks(tmp_path):
    good = tmp_path / "good"
    _model(attn="sdpa").save_pretrained(good, max_shard_size="40KB")
    _word_tokenizer(VOCAB - 1).save_pretrained(good)
    config = seqpar.hf.check_model_folder(good)
    assert config.model_type == "llama"
    seqpar.hf.check_tokenizer(_word_tokenizer(VOCAB - 1), config)  # VOCAB tokens: fits
    with pytest.raises(ValueError, match=rf"tokenizer has {VOCAB + 1} tokens but the model's "
                                         rf"vocab_size is {VOCAB}"):
        seqpar.hf.check_tokenizer(_word_tokenizer(VOCAB), config)
    with pytest.raises(ValueError, match="not a directory"):
        seqpar.hf.check_model_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.json is missing"):
        seqpar.hf.check_model_folder(tmp_path)
    shard = sorted(good.glob("model-*.safetensors"))[-1]
    shard.rename(tmp_path / "moved.safetensors")
    with pytest.raises(ValueError, match=rf"missing: \['{shard.name}'\]"):
        seqpar.hf.check_model_folder(good)
    bare = tmp_path / "bare"
    _model(attn="sdpa").save_pretrained(bare)
    with pytest.raises(ValueError, match="no tokenizer"):
        seqpar.hf.check_model_folder(bare)
    (bare / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        seqpar.hf.check_model_folder(bare, need_tokenizer=False)
    gpt2 = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=4)).save_pretrained(
        gpt2)
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        seqpar.hf.check_model_folder(gpt2, need_tokenizer=False)
