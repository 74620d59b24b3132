"""`seqpar train --hf`: a tiny random Llama folder trained with sp=4 matches sp=1,
the exported folder reloads in transformers, bad inputs are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from test_hf_parity import tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from seqpar.train.cli import main
from seqpar.train.hf_data import HFTextDataset, position_ids_after_eos

WORDS = 90


def _tokenizer():
    """A word-level tokenizer built in-test (no download), with an EOS token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(WORDS)}
    vocab["[UNK]"], vocab["[EOS]"] = WORDS, WORDS + 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=96),
                                             attn_implementation="sdpa")
    model.save_pretrained(root / "model", max_shard_size="40KB")  # sharded safetensors
    _tokenizer().save_pretrained(root / "model")
    g = torch.Generator().manual_seed(1)
    docs = [" ".join(f"w{int(i)}" for i in torch.randint(0, WORDS, (int(n),), generator=g))
            for n in torch.randint(3, 40, (30,), generator=g)]
    (root / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs[:20]))
    (root / "b.txt").write_text(docs[20])
    return root


def _losses(path):
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def test_packing_positions_and_determinism(folder):
    tok = AutoTokenizer.from_pretrained(folder / "model")
    ds = HFTextDataset([str(folder / "a.jsonl")], 32, tok)
    a, pa = ds.batch(3, 2, seed=0)
    b, pb = ds.batch(3, 2, seed=0)
    assert torch.equal(a, b) and torch.equal(pa, pb) and a.shape == (2, 32)
    assert not torch.equal(a, ds.batch(4, 2, seed=0)[0])
    eos = tok.eos_token_id
    assert (ds.stream == eos).sum() == 20
    row = torch.tensor([[5, eos, 7, 8, eos, eos, 9]])
    assert position_ids_after_eos(row, eos).tolist() == [[0, 1, 0, 1, 2, 0, 0]]


def test_sp4_matches_sp1_and_export_reloads(folder, tmp_path):
    model, data = folder / "model", f"{folder / 'a.jsonl'},{folder / 'b.txt'}"
    common = ["--hf", str(model), "--data", data, "--seq-len", "32", "--batch-size", "2",
              "--steps", "3", "--lr", "1e-2", "--warmup", "1", "--log-every", "1",
              "--dtype", "float32", "--strategy", "ring", "--layout", "zigzag"]
    m1, m4 = tmp_path / "m1.jsonl", tmp_path / "m4.jsonl"
    export1 = tmp_path / "export1"
    assert main(common + ["--nproc", "1", "--metrics", str(m1), "--save-hf", str(export1)]) == 0
    export = tmp_path / "export"
    assert main(common + ["--nproc", "4", "--sp", "4", "--metrics", str(m4),
                          "--save-hf", str(export)]) == 0
    mtp = tmp_path / "mtp.jsonl"  # TP-SP + recomputation: still the same losses
    assert main(common + ["--nproc", "4", "--sp", "2", "--tp", "2", "--metrics", str(mtp),
                          "--activation-checkpointing"]) == 0
    mhy = tmp_path / "mhy.jsonl"  # hybrid ulysses=2 x ring=2, replicated (DDP-style)
    assert main(common[:-4] + ["--strategy", "hybrid", "--layout", "zigzag", "--nproc", "4",
                               "--sp", "4", "--no-fsdp", "--metrics", str(mhy)]) == 0
    one, four, tp = _losses(m1), _losses(m4), _losses(mtp)
    assert len(one) == 3 and one[0] > 0
    for other in (four, tp, _losses(mhy)):
        torch.testing.assert_close(torch.tensor(other, dtype=torch.float64),
                                   torch.tensor(one, dtype=torch.float64), rtol=1e-5, atol=0)
    assert one[-1] != one[0]  # the weights moved
    # the export is a normal HF folder; its weights differ from the start
    again = AutoModelForCausalLM.from_pretrained(export)
    start = AutoModelForCausalLM.from_pretrained(model)
    assert AutoTokenizer.from_pretrained(export).eos_token == "[EOS]"
    ids = torch.randint(0, WORDS, (1, 16))
    assert not torch.allclose(again(input_ids=ids).logits, start(input_ids=ids).logits)
    # and the exported weights are the trained ones: the 1-rank run of the same steps
    # exported the same model (within fp32 summation-order noise)
    ref = AutoModelForCausalLM.from_pretrained(export1)
    torch.testing.assert_close(again(input_ids=ids).logits, ref(input_ids=ids).logits,
                               rtol=1e-4, atol=1e-5)


def test_resume_continues_the_same_run(folder, tmp_path):
    """dp=2 (FSDP over dp): 3 steps vs 2 steps + resume in 1 process: the third loss is
    the same (with --warmup 1 the LR of steps 0-1 does not depend on --steps)."""
    common = ["--hf", str(folder / "model"), "--data", str(folder / "a.jsonl"), "--seq-len",
              "32", "--batch-size", "2", "--steps", "3", "--lr", "1e-2", "--warmup", "1",
              "--dtype", "float32", "--nproc", "2", "--dp", "2"]
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert main(common + ["--metrics", str(full)]) == 0
    ckpt = tmp_path / "ckpt"
    assert main(common + ["--steps", "2", "--checkpoint-dir", str(ckpt)]) == 0
    assert (ckpt / "step-00000002" / ".metadata").exists()
    assert main(common[:-4] + ["--nproc", "1", "--checkpoint-dir", str(ckpt), "--resume",
                               "--metrics", str(part)]) == 0
    resumed = [json.loads(x) for x in part.read_text().splitlines()]
    assert [r["step"] for r in resumed] == [3]
    torch.testing.assert_close(resumed[0]["loss"], _losses(full)[2], rtol=1e-5, atol=0)


@pytest.mark.parametrize("extra, message", [
    (["--data", "passkey"], "--hf needs text data"),
    (["--seq-len", "30", "--sp", "4", "--nproc", "4"], "needs seq_len divisible by 8"),
    (["--strategy", "ulysses", "--nproc", "8", "--sp", "8"], "n_heads/tp = 4/1 = 4"),
    (["--data", "nowhere.txt"], "data file 'nowhere.txt' does not exist"),
])
def test_bad_inputs_are_one_line_errors(folder, capfd, extra, message):
    argv = ["--hf", str(folder / "model"), "--data", str(folder / "b.txt"), "--steps", "1",
            "--nproc", "1", "--seq-len", "32"] + extra
    assert main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqpar train: error:") and message in err[0]


def test_bad_folders_are_one_line_errors(folder, tmp_path, capfd):
    small = tmp_path / "small"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=64)).save_pretrained(small)
    _tokenizer().save_pretrained(small)  # 92 tokens > 64
    capfd.readouterr()  # the saving's progress bars
    for path, message in [(small, "vocab_size is 64"), (tmp_path / "none", "not a directory")]:
        assert main(["--hf", str(path), "--data", str(folder / "b.txt"), "--nproc", "1"]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["--save-hf", str(tmp_path / "x"), "--nproc", "1"]) == 2
    assert "exports a --hf model" in capfd.readouterr().err


def test_parquet_needs_pyarrow_or_reads_the_text_column(tmp_path):
    from seqpar.train.hf_data import read_texts

    path = tmp_path / "d.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(ValueError, match="reading .parquet needs pyarrow"):
            read_texts([str(path)])
        return
    pq.write_table(pa.table({"text": ["w1 w2", "w3"]}), path)
    assert read_texts([str(path)]) == ["w1 w2", "w3"]
