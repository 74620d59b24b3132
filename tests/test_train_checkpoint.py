"""Checkpoints: exact resume, resume onto other dp/sp/tp degrees, atomic saves."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from seqpar.train import TrainConfig, train
from seqpar.train.checkpoint import latest_checkpoint

BASE = dict(seq_len=64, batch_size=4, steps=20, lr=3e-3, warmup=3, log_every=10**6)
TOL = 1e-5


def _cfg(world: int, **kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "dp": 1, "tp": 1, "sp": world, **kw}).resolve(world,
                                                                               cuda=False)


def _worst(got, ref):
    assert len(got) == len(ref), (got, ref)
    return max(abs(a - b) / abs(b) for a, b in zip(got, ref))


def _resume_grid(rank, world, root):
    root = Path(root)
    failures = []
    # A: uninterrupted sp=4 FSDP run, checkpoints at steps 10 and 20
    full = train(_cfg(world, fsdp=True, layout="zigzag", checkpoint_dir=str(root / "a"),
                      checkpoint_every=10), quiet=True).losses
    step10 = root / "a" / "step-00000010"
    # same degrees: the loss curve continues bit for bit
    again = train(_cfg(world, fsdp=True, layout="zigzag", resume=str(step10)), quiet=True)
    if again.start_step != 10 or again.losses != full[10:]:
        failures.append(f"exact resume: start {again.start_step}\n  got {again.losses}\n"
                        f"  ref {full[10:]}")
    # other degrees (FSDP resharding, DTensor TP shards): equal to within fp32 round-off
    for kw in (dict(dp=2, sp=2, fsdp=False), dict(tp=2, sp=2, fsdp=True)):
        got = train(_cfg(world, layout="zigzag", resume=str(step10), **kw), quiet=True).losses
        if not _worst(got, full[10:]) <= TOL:
            failures.append(f"resume onto {kw}: rel err {_worst(got, full[10:]):.3g}")
    # B: saved by a tp=2 x sp=2 replicated run, resumed by sp=4 FSDP
    tp_run = train(_cfg(world, tp=2, sp=2, fsdp=False, checkpoint_dir=str(root / "b"),
                        checkpoint_every=10), quiet=True).losses
    got = train(_cfg(world, fsdp=True, resume=str(root / "b")), quiet=True)
    if got.start_step != 20 or got.losses:
        failures.append(f"resume from the newest in a folder: start {got.start_step}")
    got = train(_cfg(world, fsdp=True, resume=str(root / "b" / "step-00000010")),
                quiet=True).losses
    if not _worst(got, tp_run[10:]) <= TOL:
        failures.append(f"tp=2 checkpoint onto sp=4: rel err {_worst(got, tp_run[10:]):.3g}")
    if rank == 0:
        kept = sorted(p.name for p in (root / "a").iterdir())
        if kept != ["latest", "step-00000010", "step-00000020"]:
            failures.append(f"checkpoint folder holds {kept}")
    assert not failures, "\n".join(failures)


def test_resume_exact_and_onto_other_degrees(spawn, tmp_path):
    spawn(_resume_grid, 4, str(tmp_path))


_KILLED_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import seqpar.train.checkpoint as ck
    from seqpar.train import TrainConfig, train

    real_save = ck.dcp.save
    def save(state, checkpoint_id, **kw):
        if Path(checkpoint_id).name.endswith("step-00000010"):
            real_save(state, checkpoint_id=checkpoint_id, **kw)  # data written, not renamed
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(state, checkpoint_id=checkpoint_id, **kw)
    ck.dcp.save = save
    cfg = TrainConfig(**eval(sys.argv[1])).resolve(1, cuda=False)
    train(cfg, quiet=True)
""")


def test_kill_during_save_leaves_previous_checkpoint_usable(tmp_path):
    kw = dict(BASE, steps=12, checkpoint_every=5, checkpoint_dir=str(tmp_path), dp=1, sp=1,
              tp=1)
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_SAVE, repr(kw)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert (tmp_path / ".tmp-step-00000010").is_dir()  # the interrupted save
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    full = train(TrainConfig(**{**kw, "checkpoint_dir": None}).resolve(1, cuda=False),
                 quiet=True).losses
    resumed = train(TrainConfig(**{**kw, "resume": True}).resolve(1, cuda=False), quiet=True)
    assert resumed.start_step == 5
    assert resumed.losses == full[5:]
    assert (tmp_path / "step-00000010" / ".metadata").exists()  # saved again, completely
    assert latest_checkpoint(tmp_path).name == "step-00000012"  # and the run's end
    assert not (tmp_path / ".tmp-step-00000010").exists()
