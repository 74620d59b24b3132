"""4D parallelism: pipeline stages (torch.distributed.pipelining) composed with
sequence, tensor and data parallelism, exactly equal to the one-process run.

``tiny`` with 4 layers, float32: every step's global loss and every parameter's
gradient after step 1 agree with a single-process run (no torch.distributed)
within 1e-5 relative, for pp=2 x sp=2 (every schedule, FSDP2 and replicated,
packed documents with activation checkpointing, the chunked head + loss against the
unchunked reference), pp=2 x sp=2 x tp=2 and
pp=2 x dp=2 x sp=2 (8 ranks), pp=4 x sp=2, pp=2 x hybrid sp=4; the metrics carry the bubble.
DCP checkpoints written under pp=2 x sp=2 resume under pp=1 x sp=4 and the
reverse with the same subsequent losses. Bad configurations are errors before
any process group exists. One spawn per world size; the cases loop inside it.
"""

from __future__ import annotations

import json

import pytest
from parity import FirstGrads

from seqpar.models import model_config
from seqpar.parallel import ParallelDims
from seqpar.train import TrainConfig, train

STEPS = 4
BASE = dict(seq_len=64, batch_size=4, steps=STEPS, lr=3e-3, warmup=2, log_every=10**6,
            data="passkey", n_layers=4)
TOL = 1e-5


def _cfg(world: int, **kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "dp": 1, "tp": 1, **kw}).resolve(world, cuda=False)


def _reference(**kw) -> tuple[list[float], dict]:
    probe = FirstGrads()
    losses = train(_cfg(1, sp=1, fsdp=False, **kw), quiet=True, on_gradients=probe).losses
    return losses, probe.grads


def _compare(label: str, losses, grads, ref) -> list[str]:
    ref_losses, ref_grads = ref
    failures = []
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses[-len(losses):]))
    if not losses or not worst <= TOL:
        failures.append(f"{label}: worst loss rel err {worst:.3g}\n  got {losses}\n"
                        f"  ref {ref_losses}")
    if grads is None:
        return failures
    if sorted(grads) != sorted(ref_grads):
        return failures + [f"{label}: gradient names differ: "
                           f"{sorted(set(grads) ^ set(ref_grads))}"]
    for name, want in ref_grads.items():
        err = ((grads[name] - want).norm() / want.norm()).item()
        if not err <= TOL:
            failures.append(f"{label}: step-1 grad of {name} rel err {err:.3g}")
    return failures


def _grid(rank, world, refs, cases, ckpt_root):
    failures = []
    for case in cases:
        kw = dict(case)
        ref_key = "text" if "data" in kw else "passkey"
        if "resume_from" in kw:  # save under one split at step 2, resume under another
            first, second = kw.pop("resume_from"), kw
            ckpt = f"{ckpt_root}/{json.dumps(case, sort_keys=True).replace(' ', '')}"
            train(_cfg(world, checkpoint_dir=ckpt, **first), quiet=True, stop_at=2)
            losses = train(_cfg(world, checkpoint_dir=ckpt, resume=True, **second),
                           quiet=True).losses
            failures += _compare(f"world={world} {case}", losses, None, refs[ref_key])
            continue
        probe = FirstGrads()
        metrics = f"{ckpt_root}/metrics-{world}-{cases.index(case)}-{rank}.jsonl"
        losses = train(_cfg(world, metrics=metrics, **kw), quiet=True,
                       on_gradients=probe).losses
        failures += _compare(f"world={world} {case} (rank {rank})", losses, probe.grads,
                             refs[ref_key])
        if rank == 0:  # the measured bubble: every step, every pp rank, a fraction
            rows = [json.loads(line) for line in open(metrics)]
            pp = kw.get("pp", 1)
            bad = [r for r in rows if not (0 <= r["bubble"] < 1
                                           and len(r["bubble_per_stage"]) == pp)]
            if len(rows) != STEPS or bad:
                failures.append(f"{case}: metrics rows without a valid bubble: {bad or rows}")
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def refs(text_file):
    return {"passkey": _reference(), "text": _reference(data=text_file)}


def test_pipeline_parity_and_resume_4_ranks(spawn, refs, text_file, tmp_path):
    cases = [
        dict(pp=2, sp=2, pp_schedule="gpipe", fsdp=True),
        dict(pp=2, sp=2, pp_schedule="1f1b", fsdp=False, microbatches=4),
        dict(pp=2, sp=2, pp_schedule="interleaved", virtual_stages=2, microbatches=2,
             fsdp=True),
        dict(pp=2, sp=2, data=text_file, strategy="ring", layout="zigzag", fsdp=True,
             activation_checkpointing=True),
        # the chunked head + loss in the last stage (tied head), 2 chunks per microbatch;
        # FSDP2 with 1F1B, replicated with interleaved (the last stage is virtual stage 3)
        dict(pp=2, sp=2, loss_chunk=16, microbatches=4, fsdp=True),
        dict(pp=2, sp=2, loss_chunk=16, pp_schedule="interleaved", virtual_stages=2,
             microbatches=2, fsdp=False),
        dict(pp=1, sp=4, resume_from=dict(pp=2, sp=2, fsdp=True)),
        dict(pp=2, sp=2, pp_schedule="gpipe", resume_from=dict(pp=1, sp=4, fsdp=True)),
    ]
    spawn(_grid, 4, refs, cases, str(tmp_path))


def test_pipeline_parity_8_ranks(spawn, refs, tmp_path):
    cases = [
        dict(pp=2, sp=2, tp=2, fsdp=True),
        dict(pp=2, dp=2, sp=2, pp_schedule="gpipe", fsdp=True),
        dict(pp=2, sp=2, tp=2, pp_schedule="interleaved", virtual_stages=2, microbatches=2,
             fsdp=False, strategy="ulysses", layout="contiguous"),
        dict(pp=4, sp=2, microbatches=4, fsdp=True),
        dict(pp=2, sp=4, strategy="hybrid", ulysses=2, ring=2, layout="striped", fsdp=True),
    ]
    spawn(_grid, 8, refs, cases, str(tmp_path))


def test_bad_pipeline_configs_are_errors_before_any_group():
    tiny4 = model_config("tiny", n_layers=4)
    with pytest.raises(ValueError) as err:
        ParallelDims(pp=3, sp=2, microbatches=3).validate(8, model=tiny4, batch_size=4)
    msg = str(err.value)
    assert "n_layers=4 cannot be split evenly into pp*virtual_stages = 3*1 = 3 stages" in msg
    assert "batch_size=4 (global) is not divisible by dp*microbatches = 1*3 = 3" in msg
    assert "pp*dp*sp*tp = 3*1*2*1 = 6 != world size 8" in msg
    with pytest.raises(ValueError, match="interleaved' needs virtual_stages >= 2"):
        ParallelDims(pp=2, pp_schedule="interleaved").validate(2)
    with pytest.raises(ValueError, match="virtual_stages=2 needs pp_schedule='interleaved'"):
        ParallelDims(pp=2, virtual_stages=2).validate(2)
    with pytest.raises(ValueError, match="1f1b' needs microbatches >= pp=4"):
        ParallelDims(pp=4, microbatches=2).validate(4)
    with pytest.raises(ValueError, match="unknown pp_schedule"):
        ParallelDims(pp=2, pp_schedule="zero-bubble").validate(2)
    ParallelDims(pp=2, sp=2, pp_schedule="interleaved", virtual_stages=2).validate(
        4, model=tiny4, batch_size=4)


def test_train_cli_pipeline_errors(capsys, tmp_path):
    from seqpar.train.cli import load_toml, main

    assert main(["--nproc", "3", "--pp", "3", "--sp", "1", "--n-layers", "4",
                 "--batch-size", "3", "--seq-len", "64"]) == 2
    assert "cannot be split evenly into pp*virtual_stages = 3*1 = 3 stages" in \
        capsys.readouterr().err
    assert main(["--nproc", "2", "--pp", "2", "--hf", str(tmp_path)]) == 2
    assert "--hf with --pp 2" in capsys.readouterr().err
    toml = tmp_path / "pp.toml"
    toml.write_text('pp = 2\npp_schedule = "interleaved"\nmicrobatches = 4\n'
                    'virtual_stages = 2\nn_layers = 8\n')
    assert load_toml(toml) == dict(pp=2, pp_schedule="interleaved", microbatches=4,
                                   virtual_stages=2, n_layers=8)
