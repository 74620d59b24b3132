"""Errors a person can read: `seqpar train` (and demo) say what is wrong in one line.

Checkable problems (option ranges, TOML duplicates and types, --resume targets,
a checkpoint of another model size) are found before any process starts (exit
2); what can only fail inside the ranks is one ``rank R: Type: message`` line
with the path of the full traceback (exit 1). Never one traceback per rank.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seqpar.cli import main as seqpar_main
from seqpar.train import TrainConfig, train
from seqpar.train.cli import load_toml, main
from seqpar.train.preflight import preflight, resume_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--seq-len", "64", "--batch-size", "2", "--steps", "2"]


def _cli(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "seqpar.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _one_error_line(err: str, prefix: str) -> str:
    """The single non-empty stderr line; no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real one-step checkpoint of the tiny model (one process, no group)."""
    root = tmp_path_factory.mktemp("ckpt")
    cfg = TrainConfig(seq_len=64, batch_size=2, steps=1, warmup=0, log_every=10**6,
                      checkpoint_dir=str(root), checkpoint_every=1)
    train(cfg.resolve(1, cuda=False), quiet=True)
    return root


# ------------------------------------------------------------------ before spawning

@pytest.mark.parametrize("argv, needle", [
    (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--warmup", "-3"], "--warmup must be >= 0, got -3"),
    (["--grad-clip", "-1"], "--grad-clip must be >= 0, got -1.0"),
    (["--min-lr-ratio", "2"], "--min-lr-ratio must be <= 1, got 2.0"),
    (["--nproc", "0"], "--nproc must be >= 1, got 0"),
    (["--checkpoint-every", "5"], "--checkpoint-every 5 needs --checkpoint-dir"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--resume", "/no/such/checkpoint"], "--resume /no/such/checkpoint: no such checkpoint"),
])
def test_bad_options_are_one_line_before_spawning(argv, needle, capsys):
    assert main([*argv, "--nproc", "2"] if "--nproc" not in argv else argv) == 2
    line = _one_error_line(capsys.readouterr().err, "seqpar train: error: ")
    assert needle in line


@pytest.mark.parametrize("text, needle", [
    ('steps = 3\n[train]\nsteps = 4\n', "keys given twice: steps ('steps' and '[train] steps')"),
    ('seq-len = 64\nseq_len = 64\n', "keys given twice: seq_len ('seq-len' and 'seq_len')"),
    ('steps = "ten"\n', "steps = 'ten' is str, expected int"),
    ('steps = 2.5\n', "steps = 2.5 is float, expected int"),
    ('lr = "x"\n', "lr = 'x' is str, expected float or int"),
    ('steps = true\n', "steps = True is bool, expected int"),
    ('[train]\nfsdp = 1\n', "fsdp = 1 is int, expected bool"),
])
def test_toml_duplicates_and_wrong_types(tmp_path, capsys, text, needle):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="twice|wrong type") as info:
        load_toml(path)
    assert needle in str(info.value) and str(path) in str(info.value)
    assert main(["--config", str(path)]) == 2
    assert needle in _one_error_line(capsys.readouterr().err, "seqpar train: error: ")


def test_toml_ints_are_floats_and_good_files_load(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lr = 1\nresume = true\n[train]\nseq-len = 64\ndocuments = false\n')
    assert load_toml(path) == {"lr": 1, "resume": True, "seq_len": 64, "documents": False}


def test_resume_targets(tmp_path, checkpoint):
    step = checkpoint / "step-00000001"
    cfg = TrainConfig(seq_len=64, batch_size=2, checkpoint_dir=str(checkpoint), resume=True)
    # bare --resume: `latest`; a folder: its newest; a step folder: itself; the shapes fit
    assert resume_target(cfg) == step
    for target in (str(checkpoint), str(step)):
        resolved = TrainConfig(seq_len=64, batch_size=2, resume=target).resolve(1, cuda=False)
        assert preflight(resolved, 1) == step
    # bare --resume with an empty checkpoint folder: a fresh start (preemptible jobs)
    assert resume_target(TrainConfig(checkpoint_dir=str(tmp_path / "new"), resume=True)) is None
    # `latest` naming a checkpoint without metadata is an error, not a silent fallback
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "step-00000002").mkdir()
    (broken / "latest").write_text("step-00000002\n")
    with pytest.raises(ValueError, match=r"step-00000002 \(named by .*latest\) is unreadable"):
        resume_target(TrainConfig(checkpoint_dir=str(broken), resume=True))
    # a folder without any complete checkpoint
    (tmp_path / "empty" / "step-00000003").mkdir(parents=True)
    with pytest.raises(ValueError, match="newest checkpoint .*step-00000003 is unreadable"):
        resume_target(TrainConfig(resume=str(tmp_path / "empty")))


def test_checkpoint_of_another_model_is_refused_before_spawning(checkpoint, capsys):
    assert main(["--model", "125m", "--resume", str(checkpoint), "--nproc", "2", *SMALL]) == 2
    line = _one_error_line(capsys.readouterr().err, "seqpar train: error: checkpoint ")
    assert "does not fit --model 125m" in line and "(264, 64) there, (264, 768) here" in line


# ------------------------------------------------------------------ inside the ranks

def _truncated(checkpoint: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "truncated"
    shutil.copytree(checkpoint, bad)
    for f in bad.rglob("*.distcp"):
        with open(f, "r+b") as fh:
            fh.truncate(100)
    return bad


def test_rank_failure_is_one_line_with_the_log(checkpoint, tmp_path):
    """Two spawned ranks fail loading a truncated checkpoint: one line, one log path."""
    res = _cli("train", "--nproc", "2", *SMALL, "--steps", "3", "--resume",
               str(_truncated(checkpoint, tmp_path)))
    assert res.returncode == 1, res.stderr
    line = _one_error_line(res.stderr, "seqpar train: error: rank ")
    assert "failed reading zip archive" in line and "(full log: " in line
    log = Path(line.rsplit("(full log: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()


def test_one_process_failure_is_one_line(checkpoint, tmp_path, capfd):
    bad = _truncated(checkpoint, tmp_path)
    assert main(["--nproc", "1", *SMALL, "--steps", "3", "--resume", str(bad)]) == 1
    line = _one_error_line(capfd.readouterr().err, "seqpar train: error: rank 0: ")
    assert "(full log: " in line


def test_command_line_errors_have_no_traceback():
    res = _cli("train", "--lr", "-1")
    assert res.returncode == 2
    assert "--lr must be > 0" in _one_error_line(res.stderr, "seqpar train: error: ")


def test_demo_rank_failure_is_one_line():
    res = _cli("demo", "--nproc", "2", "--seq-len", "64", "--heads", "4", "--head-dim", "8",
               "--strategies", "ring", "--layout", "spiral")
    assert res.returncode == 1
    line = _one_error_line(res.stderr, "seqpar demo: error: rank ")
    assert "unknown layout 'spiral'" in line and "(full log: " in line


def test_version(capsys):
    import seqpar

    assert seqpar_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"seqpar {seqpar.__version__}"
