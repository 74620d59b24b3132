"""Preemption (issue 11): on SIGTERM / SIGINT every rank finishes the current step, the
ranks agree to stop after the same step, save, and exit 128 + signal; a second signal
ends the process at once; the handlers exist only inside train()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from seqpar.train import Preempted, TrainConfig, train
from seqpar.train.checkpoint import latest_checkpoint

BASE = dict(seq_len=64, batch_size=4, steps=5, lr=3e-3, warmup=2, log_every=10**6)


def _cfg(world: int, **kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "dp": 1, "tp": 1, "sp": world, **kw}).resolve(world,
                                                                               cuda=False)


def _sigterm_rank0_at_step_2(rank: int):
    def hook(step, par):
        if rank == 0 and step == 1:  # 0-based: the second step
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def _preempt_and_resume(rank, world, root):
    root = Path(root)
    failures = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    full = train(_cfg(world), quiet=True).losses
    cfg = _cfg(world, checkpoint_dir=str(root), checkpoint_every=10)
    try:
        train(cfg, quiet=rank != 0, on_gradients=_sigterm_rank0_at_step_2(rank))
        failures.append("train returned instead of raising Preempted")
    except Preempted as stopped:  # every rank, though only rank 0 got the signal
        if (stopped.code, stopped.signum, stopped.step) != (143, signal.SIGTERM, 2):
            failures.append(f"stopped with {stopped.code}, {stopped.signum}, {stopped.step}")
        if stopped.checkpoint != root / "step-00000002":
            failures.append(f"checkpoint {stopped.checkpoint}")
        if stopped.result.losses != full[:2]:
            failures.append(f"losses before the stop {stopped.result.losses} != {full[:2]}")
    if (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) != before:
        failures.append("signal handlers not restored")
    if latest_checkpoint(root) != root / "step-00000002":
        failures.append(f"newest checkpoint {latest_checkpoint(root)}")
    resumed = train(_cfg(world, checkpoint_dir=str(root), resume=True), quiet=True)
    if resumed.start_step != 2 or resumed.losses != full[2:]:
        failures.append(f"resume: start {resumed.start_step}, {resumed.losses} != {full[2:]}")
    assert not failures, f"rank {rank}: " + "\n".join(failures)


def test_sigterm_on_one_rank_stops_all_after_the_same_step_and_saves(spawn, tmp_path, capfd):
    spawn(_preempt_and_resume, 4, str(tmp_path))
    err = capfd.readouterr().err
    assert ("seqpar train: stopped by SIGTERM after step 2 (checkpoint "
            f"{tmp_path / 'step-00000002'}); exit status 143; continue with --resume") in err


_ONE_PROCESS = textwrap.dedent("""
    import os, signal, sys, time
    from seqpar.train import TrainConfig, train

    signals, gap = eval(sys.argv[2])
    def hook(step, par):
        if step == 1:
            for i, s in enumerate(signals):
                if i:
                    time.sleep(gap)
                os.kill(os.getpid(), s)
    cfg = TrainConfig(**eval(sys.argv[1])).resolve(1, cuda=False)
    train(cfg, quiet=True, on_gradients=hook)
    print("finished")
""")


@pytest.mark.parametrize("signals, gap, code, saved", [
    ([signal.SIGINT], 0, 130, True),                     # Ctrl-C: stop, save, exit 130
    ([signal.SIGTERM, signal.SIGTERM], 0, 143, True),    # a duplicate copy: still one stop
    ([signal.SIGTERM, signal.SIGTERM], 1.2, -signal.SIGTERM, False),  # second: at once
])
def test_signals_in_one_process(tmp_path, signals, gap, code, saved):
    kw = dict(BASE, checkpoint_dir=str(tmp_path), dp=1, sp=1, tp=1)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", _ONE_PROCESS, repr(kw),
                           repr(([int(s) for s in signals], gap))],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == code, proc.stderr
    assert "finished" not in proc.stdout
    assert (latest_checkpoint(tmp_path) is not None) == saved
    if saved:
        assert latest_checkpoint(tmp_path).name == "step-00000002"
