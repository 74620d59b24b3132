"""``seqpar train`` memory-related options (issue 13).

So far: ``--vocab-size`` (a model vocabulary larger than the data's, so the loss
head has a realistic size while the built-in data keeps its byte token ids).
"""

from __future__ import annotations

import pytest
from parity import FirstGrads, compare_training

from seqpar.train import TrainConfig, train
from seqpar.train.cli import main
from seqpar.train.preflight import preflight


def test_vocab_size_trains_and_checkpoint_preflight_uses_it(tmp_path, capsys):
    root = tmp_path / "ckpt"
    cfg = TrainConfig(seq_len=64, batch_size=2, steps=2, warmup=0, log_every=10**6,
                      vocab_size=4096, checkpoint_dir=str(root), checkpoint_every=2)
    result = train(cfg.resolve(1, cuda=False), quiet=True)
    assert len(result.losses) == 2 and all(loss == loss for loss in result.losses)
    # the checkpoint holds a 4096-row embedding: the same --vocab-size resumes ...
    same = TrainConfig(seq_len=64, batch_size=2, vocab_size=4096, resume=str(root))
    assert preflight(same.resolve(1, cuda=False), 1) is not None
    # ... and the data's own vocabulary (264) does not fit it, named before spawning
    assert main(["--resume", str(root), "--nproc", "2", "--seq-len", "64",
                 "--batch-size", "2", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "(4096, 64) there, (264, 64) here" in err, err


def test_vocab_size_below_the_data_is_refused(capsys):
    assert main(["--vocab-size", "100", "--nproc", "2", "--seq-len", "64"]) == 2
    err = capsys.readouterr().err
    assert "--vocab-size 100 is smaller than the data's vocabulary (264" in err, err
    with pytest.raises(ValueError, match="--vocab-size must be >= 1, got 0"):
        preflight(TrainConfig(vocab_size=0).resolve(1, cuda=False), 1)


# ------------------------------------------------------------------ parity (issue 13)
#
# CPU, fp32, ``tiny`` with --vocab-size 4096: each memory option on gives the same
# per-step losses and step-1 gradients (1e-5 relative) as all options off (the
# one-process run without torch.distributed). Trimmed grid to stay ~1 minute on two
# busy cores: every option alone at sp=1 (no group) and at sp=2 ring + FSDP2 (plus
# --offload-optimizer, which needs FSDP2); at sp=4 ring, ulysses and allgather each
# with all activation options combined (loss chunk, MLP tiles, offload of layer 0).

PARITY = dict(seq_len=64, batch_size=2, steps=3, lr=3e-3, warmup=1, log_every=10**6,
              data="passkey", vocab_size=4096)
ALONE = [dict(loss_chunk=24), dict(mlp_chunk=8), dict(activation_checkpointing="selective"),
         dict(activation_checkpointing="offload"),
         dict(activation_checkpointing="offload", offload_layers=1),
         dict(activation_checkpointing="selective", offload_layers=1)]
COMBINED = dict(loss_chunk=40, mlp_chunk=8, activation_checkpointing="offload",
                offload_layers=1)



def _run(world: int, **kw) -> tuple[list[float], dict]:
    probe = FirstGrads()
    cfg = TrainConfig(**{**PARITY, "dp": 1, "sp": world, "tp": 1, **kw})
    losses = train(cfg.resolve(world, cuda=False), quiet=True, on_gradients=probe).losses
    return losses, probe.grads


@pytest.fixture(scope="module")
def reference():
    return _run(1, fsdp=False)


def test_each_option_alone_one_process(reference):
    bad = []
    for case in ALONE:
        bad += compare_training(f"sp=1 {case}", _run(1, fsdp=False, **case), reference)
    assert not bad, "\n".join(bad)


def _grid(rank, world, reference, cases):
    bad = []
    for case in cases:
        bad += compare_training(f"world={world} {case} (rank {rank})", _run(world, **case),
                                reference)
    assert not bad, "\n".join(bad)


def test_parity_sp2_each_option(spawn, reference):
    cases = [dict(strategy="ring", fsdp=True, **c) for c in ALONE]
    cases.append(dict(strategy="ring", fsdp=True, offload_optimizer=True))
    spawn(_grid, 2, reference, cases)


def test_parity_sp4_strategies_combined(spawn, reference):
    cases = [dict(strategy=s, fsdp=True, **COMBINED) for s in ("ring", "ulysses", "allgather")]
    spawn(_grid, 4, reference, cases)


# ------------------------------------------------------------------ --memory (planner)

def test_memory_auto_and_manual_refusal():
    from seqpar.train.memory_plan import plan_memory

    def resolved(**kw):
        return TrainConfig(model="1b", seq_len=131072, batch_size=1, sp=4, dtype="bf16",
                           data="passkey", **kw).resolve(4, cuda=False)

    # CPU: nothing planned, options unchanged
    cpu = resolved(memory="auto")
    assert "no GPU, planning skipped" in plan_memory([], cpu, cuda=False)
    assert cpu.loss_chunk == 0 and cpu.checkpointing_mode == "none"
    # manual with nothing on: refused before any allocation, naming peak and a fix
    with pytest.raises(ValueError, match=r"will not fit: peak [\d.]+ GiB GPU of 16.0 GiB.*"
                                         r"cheapest that fits: --loss-chunk"):
        plan_memory([], resolved(), cuda=True, gpu_memory_gib=16)
    # --force: runs, the header says so
    assert "does not fit; --force" in plan_memory([], resolved(force=True), cuda=True,
                                                  gpu_memory_gib=16)
    # auto: the planner's choice is written into every config, and it fits
    raw, res = TrainConfig(memory="auto"), resolved(memory="auto")
    line = plan_memory([raw], res, cuda=True, gpu_memory_gib=16)
    assert "(fits)" in line and "False" not in line, line
    keys = ("loss_chunk", "mlp_chunk", "activation_checkpointing", "offload_layers",
            "offload_optimizer")
    assert [getattr(raw, k) for k in keys] == [getattr(res, k) for k in keys]
    assert res.mlp_chunk or res.loss_chunk or res.checkpointing_mode != "none", res
    # ... and the chosen options pass a manual check
    res.memory = "manual"
    assert "predicted peak" in plan_memory([], res, cuda=True, gpu_memory_gib=16)
    # auto with nothing that fits: refused, naming the cheapest option's peak and the
    # longest length that fits; --force applies the closest
    with pytest.raises(ValueError, match=r"--memory auto: no configuration fits 131072 tokens "
                                         r"over 4 GPUs: the cheapest option, --loss-chunk.*"
                                         r"needs [\d.]+ GiB GPU of 2.0 GiB.*the longest that "
                                         r"fits: \d+ tokens"):
        plan_memory([], resolved(memory="auto"), cuda=True, gpu_memory_gib=2)
    forced = resolved(memory="auto", force=True)
    assert "does NOT fit (closest; --force)" in plan_memory([], forced, cuda=True,
                                                            gpu_memory_gib=2)
    # the first k layers offloaded, the rest selective: planned and spelled as such
    from seqpar.memory.planner import MemoryConfig
    from seqpar.train.memory_plan import memory_config, set_memory_options

    mixed = TrainConfig()
    set_memory_options(mixed, MemoryConfig(ac_mode="selective", offload_layers=3), 16)
    assert (mixed.checkpointing_mode, mixed.offload_layers) == ("selective", 3)
    assert memory_config(mixed, 16) == MemoryConfig(ac_mode="selective", offload_layers=3)
    with pytest.raises(ValueError, match="--memory 'x'"):
        plan_memory([], resolved(memory="x"), cuda=True, gpu_memory_gib=16)


# ------------------------------------------------------------------ options

def test_checkpointing_flag_forms_and_toml(tmp_path):
    from seqpar.train.cli import parse_config

    assert parse_config(["--activation-checkpointing"]).checkpointing_mode == "full"
    assert parse_config(["--no-activation-checkpointing"]).checkpointing_mode == "none"
    assert parse_config([]).checkpointing_mode == "none"
    cfg = parse_config(["--activation-checkpointing", "offload", "--offload-layers", "1",
                        "--loss-chunk", "64", "--mlp-chunk", "32", "--offload-optimizer"])
    assert (cfg.checkpointing_mode, cfg.offload_layers, cfg.loss_chunk, cfg.mlp_chunk,
            cfg.offload_optimizer) == ("offload", 1, 64, 32, True)
    for value, mode in (("true", "full"), ("false", "none"), ('"selective"', "selective")):
        path = tmp_path / "c.toml"
        path.write_text(f"activation_checkpointing = {value}\n")
        assert parse_config(["--config", str(path)]).checkpointing_mode == mode


@pytest.mark.parametrize("argv, needle", [
    (["--offload-layers", "1"], "--offload-layers 1 needs --activation-checkpointing offload"),
    (["--loss-chunk", "64", "--tp", "2"], "--loss-chunk 64 needs tp=1 (got tp=2)"),
    (["--mlp-chunk", "-1"], "--mlp-chunk must be >= 0, got -1"),
    (["--offload-optimizer", "--no-fsdp"], "--offload-optimizer needs --fsdp"),
])
def test_bad_memory_options_before_spawning(argv, needle, capsys):
    assert main([*argv, "--nproc", "2", "--seq-len", "64", "--batch-size", "2"]) == 2
    assert needle in capsys.readouterr().err


def test_memory_plan_models_the_pipeline_stage():
    """With --pp the planner estimates the worst pipeline rank: less than the whole
    model on the same sp ranks, so the default checkpointing is no heavier, and a
    configuration refused without pp is accepted with it."""
    import re

    from seqpar.train.memory_plan import default_checkpointing, pipeline_shape, plan_memory

    def resolved(world, **kw):
        return TrainConfig(model="1b", seq_len=32768, batch_size=4, sp=2, dtype="bf16",
                           data="passkey", **kw).resolve(world, cuda=False)

    def peak(cfg, gib):
        line = plan_memory([], cfg, cuda=True, gpu_memory_gib=gib)
        return float(re.search(r"predicted peak ([\d.]+) of", line).group(1))

    flat, piped = resolved(2, force=True), resolved(4, pp=2, microbatches=4, force=True)
    assert pipeline_shape(flat) is None
    assert pipeline_shape(piped).microbatches == 4 and pipeline_shape(piped).pp == 2
    assert peak(piped, 80) < peak(flat, 80)
    gpipe = resolved(4, pp=2, microbatches=4, pp_schedule="gpipe", force=True)
    assert peak(gpipe, 80) >= peak(piped, 80)
    order = ("none", "selective", "full")
    for gib in (40, 60, 80, 120):
        assert order.index(default_checkpointing(resolved(4, pp=2, microbatches=4), cuda=True,
                                                 gpu_memory_gib=gib)) <= \
            order.index(default_checkpointing(resolved(2), cuda=True, gpu_memory_gib=gib))
    budget = (peak(piped, 80) + peak(flat, 80)) / 2
    with pytest.raises(ValueError, match="will not fit"):
        plan_memory([], resolved(2), cuda=True, gpu_memory_gib=budget)
    assert "predicted peak" in plan_memory([], resolved(4, pp=2, microbatches=4), cuda=True,
                                           gpu_memory_gib=budget)
