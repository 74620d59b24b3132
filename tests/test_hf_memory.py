"""`seqpar train --hf` with every memory option (seqpar/hf/memory.py): per-step losses
and step-1 gradients equal the run without any option (CPU, gloo, fp32, 1e-5 relative).

Tiny random Llama (and Mistral with tied embeddings: another family and another head
path) folders with a word-level tokenizer built in-test. Each option alone in
one process and at sp=2 ring + FSDP2 (plus --offload-optimizer), all activation
options combined at sp=4 ring and ulysses; one process group per world size.
"""

from __future__ import annotations

import json

import pytest
import torch
from parity import FirstGrads, compare_training
from test_hf_parity import tiny_config
from test_train_hf import WORDS, _tokenizer
from transformers import AutoModelForCausalLM

from seqpar.train import TrainConfig, train
from seqpar.train.cli import main

# offload of layer 0 runs layer 1 fully checkpointed: both modes in one case
ALONE = [dict(loss_chunk=12), dict(mlp_chunk=8), dict(activation_checkpointing="selective"),
         dict(activation_checkpointing="offload", offload_layers=1)]
COMBINED = dict(loss_chunk=20, mlp_chunk=8, activation_checkpointing="offload",
                offload_layers=1)
COMBINED_SELECTIVE = dict(loss_chunk=20, mlp_chunk=8, activation_checkpointing="selective")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfmem")
    for i, (family, extra) in enumerate((("llama", {}), ("mistral",
                                                          {"tie_word_embeddings": True}))):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size=96, **extra),
                                                 attn_implementation="sdpa")
        with torch.no_grad():  # non-trivial norms and biases, so their gradients matter
            for name, p in model.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(root / family, max_shard_size="40KB")
        _tokenizer().save_pretrained(root / family)
    g = torch.Generator().manual_seed(1)
    docs = [" ".join(f"w{int(i)}" for i in torch.randint(0, WORDS, (int(n),), generator=g))
            for n in torch.randint(3, 40, (30,), generator=g)]
    (root / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    return root


def _run(folder, family: str, world: int, **kw) -> tuple[list[float], dict]:
    probe = FirstGrads()
    cfg = TrainConfig(hf=str(folder / family), data=str(folder / "a.jsonl"), seq_len=32,
                      batch_size=2, steps=3, lr=1e-2, warmup=1, log_every=10**6,
                      dtype="float32", dp=1, sp=world, tp=1, **kw)
    losses = train(cfg.resolve(world, cuda=False), quiet=True, on_gradients=probe).losses
    return losses, probe.grads


@pytest.fixture(scope="module")
def reference(folder):
    return {f: _run(folder, f, 1, fsdp=False) for f in ("llama", "mistral")}


def test_each_option_alone_one_process(folder, reference):
    losses, grads = reference["llama"]
    assert len(losses) == 3 and losses[-1] != losses[0] and len(grads) > 10
    bad = []
    for case in ALONE:
        bad += compare_training(f"llama sp=1 {case}", _run(folder, "llama", 1, fsdp=False, **case),
                        reference["llama"])
    assert not bad, "\n".join(bad)


def _grid(rank, world, folder, reference, cases):
    bad = []
    for family, case in cases:
        bad += compare_training(f"{family} world={world} {case} (rank {rank})",
                        _run(folder, family, world, **case), reference[family])
    assert not bad, "\n".join(bad)


def test_parity_sp2_each_option(spawn, folder, reference):
    cases = [("llama", dict(strategy="ring", fsdp=True, **c)) for c in ALONE]
    cases.append(("llama", dict(strategy="ring", fsdp=True, offload_optimizer=True)))
    cases.append(("mistral", dict(strategy="ring", fsdp=True, **COMBINED_SELECTIVE)))
    spawn(_grid, 2, folder, reference, cases)


def test_parity_sp4_combined(spawn, folder, reference):
    cases = [("llama", dict(strategy="ring", fsdp=True, **COMBINED)),
             ("llama", dict(strategy="ulysses", fsdp=True, **COMBINED_SELECTIVE)),
             ("mistral", dict(strategy="ring", fsdp=True, **COMBINED))]
    spawn(_grid, 4, folder, reference, cases)


def test_options_accepted_by_the_cli_and_planner_shape(folder, capfd):
    """The flags that were refused for --hf now run; --vocab-size stays refused."""
    argv = ["--hf", str(folder / "llama"), "--data", str(folder / "a.jsonl"), "--seq-len",
            "32", "--batch-size", "2", "--steps", "1", "--dtype", "float32", "--nproc", "1",
            "--loss-chunk", "16", "--mlp-chunk", "8", "--activation-checkpointing",
            "selective", "--memory", "auto"]
    assert main(argv) == 0
    assert "planning skipped" in capfd.readouterr().out
    assert main(argv[:-2] + ["--vocab-size", "128"]) == 2
    assert "--vocab-size 128: an --hf model's vocabulary" in capfd.readouterr().err


def test_planner_takes_the_hf_shape(folder):
    import importlib.util
    import os

    from transformers import LlamaConfig

    from seqpar.hf.memory import planner_config
    from seqpar.memory.planner import best
    from seqpar.models import model_config
    from seqpar.train.memory_plan import plan_memory

    llama8b = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    native = model_config("8b", vocab_size=128256)
    assert planner_config(llama8b) == native  # the same shape: the same plan
    # scripts/make_hf_model.py's folders are the native sizes (gpu_hf_vs_native.sh)
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_hf_model.py")
    spec = importlib.util.spec_from_file_location("make_hf_model", script)
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    for size in ("8b", "1b"):
        assert planner_config(make.llama_config(size, 128256, 131072)) == \
            model_config(size, vocab_size=128256), size
    want = best(native, 131072, 2, 140.0, 1000.0)
    got = best(planner_config(llama8b), 131072, 2, 140.0, 1000.0)
    assert got.config == want.config and got.reserved_gpu == want.reserved_gpu
    cfg = TrainConfig(hf=str(folder / "llama"), data=str(folder / "a.jsonl"), seq_len=65536,
                      batch_size=1, sp=2, memory="auto").resolve(2, cuda=False)
    line = plan_memory([cfg], cfg, cuda=False, gpu_memory_gib=2.0)
    assert line.startswith("memory: auto: --loss-chunk") and "predicted peak" in line, line
    manual = TrainConfig(hf=str(folder / "llama"), data=str(folder / "a.jsonl"),
                         seq_len=2**22, batch_size=1, sp=2).resolve(2, cuda=False)
    with pytest.raises(ValueError, match="the planner predicts this configuration will not"):
        plan_memory([manual], manual, cuda=False, gpu_memory_gib=2.0)


def _hf_step_peak(**options) -> int:
    """Live-tensor peak (bytes) of one forward + backward of a 4-layer HF Llama over
    512 tokens, with seqpar.hf.memory's ``options`` applied (none: transformers' own)."""
    from seqpar.hf.memory import apply_memory
    from seqpar.memory.measure import LivePeak

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config("llama", hidden_size=64, intermediate_size=512, num_hidden_layers=4,
                    head_dim=16, max_position_embeddings=512), attn_implementation="sdpa")
    if options:
        apply_memory(model, **options)
    ids = torch.randint(0, 96, (1, 512))
    with LivePeak() as m:
        model(input_ids=ids, labels=ids).loss.backward()
    return m.peak


def test_memory_options_lower_the_peak():
    """The options change memory (and, in the parity tests above, never losses): tiled
    MLP + full checkpointing keep a fraction of the plain step's activations."""
    plain = _hf_step_peak()
    lean = _hf_step_peak(mlp_chunk=64, activation_checkpointing="full")
    assert lean < 0.5 * plain, (lean, plain)
