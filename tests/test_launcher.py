"""The shared launcher (seqpar.launch): signals reach every rank, one-line errors, the
rank environment and thread rule, hangs, and NCCL's ``device_id`` fallback.

Rank functions here need no process group (the group path is covered by every
``spawn`` fixture test), so each spawned run costs only interpreter start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqpar.launch import cpu_threads, spawn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_ranks import _failing_rank, _sleeping_rank  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


# ------------------------------------------------------------------ rank functions

def _env_rank() -> int:
    """Exit 0 only if the environment is what torchrun would give, plus the thread rule."""
    world = int(os.environ["WORLD_SIZE"])
    ok = (os.environ["LOCAL_RANK"] == os.environ["RANK"]
          and os.environ["LOCAL_WORLD_SIZE"] == str(world)
          and os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
          and os.environ["OMP_NUM_THREADS"] == str(cpu_threads(world)))
    return 0 if ok else 5


# ------------------------------------------------------------------ signals

_LAUNCHER = """
import sys
sys.path[:0] = [{tests!r}, {root!r}]
from launch_ranks import _stoppable_rank
from seqpar.launch import spawn
sys.exit(spawn(_stoppable_rank, {nproc}, {out!r}, {save_s}, prog="seqpar test",
               signal_grace_s={grace}).code)
"""


def _wait_for(paths, what: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start_launcher(tmp_path: Path, nproc: int, save_s: float, grace: float):
    code = _LAUNCHER.format(tests=TESTS, root=ROOT, nproc=nproc, out=str(tmp_path),
                            save_s=save_s, grace=grace)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for([tmp_path / f"ready-{r}" for r in range(nproc)], "ranks to start")
    pids = [int((tmp_path / f"ready-{r}").read_text()) for r in range(nproc)]
    return proc, pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_launcher_reaches_every_rank_and_waits_for_them(tmp_path, sig):
    """One signal to the launcher only: every rank gets it once, finishes its 'save',
    and the launcher then exits 128+signal."""
    nproc = 3
    proc, pids = _start_launcher(tmp_path, nproc, save_s=1.0, grace=60)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    for r in range(nproc):
        assert (tmp_path / f"got-{r}").read_text() == sig.name
        assert (tmp_path / f"saved-{r}").read_text() == "1"  # saved; the signal came once
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    assert all(_gone(pid) for pid in pids)


def test_second_signal_kills_ranks_at_once(tmp_path):
    nproc = 2
    proc, pids = _start_launcher(tmp_path, nproc, save_s=60.0, grace=60)
    os.kill(proc.pid, signal.SIGTERM)
    _wait_for([tmp_path / f"got-{r}" for r in range(nproc)], "ranks to get SIGTERM")
    start = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=30)
    assert time.monotonic() - start < 10
    assert proc.returncode != 0
    assert not any((tmp_path / f"saved-{r}").exists() for r in range(nproc))
    assert all(_gone(pid) for pid in pids)


def test_ranks_that_do_not_stop_are_killed_after_the_grace(tmp_path):
    proc, pids = _start_launcher(tmp_path, 2, save_s=60.0, grace=1)
    start = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=30)
    assert time.monotonic() - start < 15 and proc.returncode == 128 + signal.SIGTERM
    assert all(_gone(pid) for pid in pids)


# ------------------------------------------------------------------ failures, env, hangs

def test_first_failure_is_one_line_with_its_log(capfd):
    out = spawn(_failing_rank, 3, prog="seqpar test")
    err = capfd.readouterr().err
    assert out.code == 1 and [f.rank for f in out.failures][0] == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("seqpar test: error: rank 1: ValueError: bad value on two lines "
                               "(full log: ")
    assert "Traceback" not in err
    log = Path(lines[0].split("(full log: ")[1].rstrip(")"))
    assert log.exists() and "Traceback" in log.read_text() and "bad value" in log.read_text()


def test_rank_environment_and_exit_codes(capfd):
    assert spawn(_env_rank, 2).code == 0
    assert capfd.readouterr().err == ""


def test_deadline_turns_a_hang_into_a_failure():
    start = time.monotonic()
    out = spawn(_sleeping_rank, 2, prog=None, deadline_s=2)
    assert out.hung == [0, 1] and out.code != 0 and time.monotonic() - start < 20


def test_harness_reports_the_failing_rank(spawn):
    with pytest.raises(AssertionError, match=r"rank 1 failed:[\s\S]*ValueError: bad value"):
        spawn(_failing_harness_rank, 2)


def _failing_harness_rank(rank, world):
    if rank == 1:
        raise ValueError("bad value")
    import torch.distributed as dist

    dist.barrier()  # never completes: rank 1 is gone; the launcher ends this rank


# ------------------------------------------------------------------ NCCL start-up

def test_init_from_env_falls_back_without_device_id(monkeypatch):
    """A torch whose init_process_group lacks ``device_id`` still gets NCCL started."""
    import torch
    import torch.distributed as dist

    from seqpar.launch import init_from_env

    calls = []

    def fake_init(backend, **kw):
        calls.append((backend, sorted(kw)))
        if "device_id" in kw:
            raise TypeError("init_process_group() got an unexpected keyword 'device_id'")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(dist, "init_process_group", fake_init)
    device = init_from_env()
    assert device == torch.device("cuda", 1)
    assert calls == [("set_device", 1),
                     ("nccl", ["device_id", "rank", "timeout", "world_size"]),
                     ("nccl", ["rank", "timeout", "world_size"])]


def test_sigterm_to_seqpar_train_stops_every_rank(tmp_path):
    """End to end: SIGTERM to the `seqpar train` launcher (only) stops its ranks, the
    launcher exits 128+15, and no rank process is left behind."""
    import threading

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="", SEQPAR_LOG_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "seqpar.cli", "train", "--nproc", "2", "--seq-len", "64",
           "--batch-size", "2", "--steps", "100000", "--log-every", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    started = threading.Event()
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "step 1/" in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    assert started.wait(180), "".join(lines)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=150)
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps  # no rank (its argv names the run folder) survives
