"""No data lost (issue 11): corrupt newest checkpoints stop a resume instead of being
skipped and overwritten, every run's end is saved, resume says what it loads and skips,
a finished run says so, and metrics are not duplicated on resume."""

from __future__ import annotations

import json
import shutil

import pytest

from seqpar.train import TrainConfig, train
from seqpar.train.checkpoint import latest_checkpoint
from seqpar.train.cli import main
from seqpar.train.resume import resolve_resume

BASE = dict(seq_len=64, batch_size=2, lr=3e-3, warmup=2, log_every=1, dp=1, sp=1, tp=1)
ARGS = ["--nproc", "1", "--seq-len", "64", "--batch-size", "2", "--warmup", "2",
        "--log-every", "1"]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, **kw}).resolve(1, cuda=False)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A 4-step run saved at steps 2 and 4, and its losses."""
    root = tmp_path_factory.mktemp("ckpt")
    losses = train(_cfg(steps=4, checkpoint_dir=str(root), checkpoint_every=2),
                   quiet=True).losses
    return root, losses


def _copy(four_steps, tmp_path):
    root, losses = four_steps
    dst = tmp_path / "ckpt"
    shutil.copytree(root, dst)
    return dst, losses


def test_corrupt_newest_named_by_latest_is_an_error_and_is_not_overwritten(
        four_steps, tmp_path, capsys):
    ckpt, losses = _copy(four_steps, tmp_path)
    newest = ckpt / "step-00000004"
    shutil.rmtree(newest)
    newest.mkdir()
    (newest / "__0_0.distcp").write_bytes(b"garbage")
    before = _names(ckpt)
    with pytest.raises(ValueError, match=r"step-00000004 \(named by .*latest\) is unreadable: "
                                         r"it has no \.metadata.*--resume .*step-00000002"):
        train(_cfg(steps=6, checkpoint_dir=str(ckpt), resume=True), quiet=True)
    rc = main(ARGS + ["--steps", "6", "--checkpoint-dir", str(ckpt), "--resume"])
    assert rc != 0
    assert "step-00000004" in capsys.readouterr().err
    assert _names(ckpt) == before and _names(newest) == ["__0_0.distcp"]
    # garbage .metadata is as unreadable as a missing one
    (newest / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot be read"):
        resolve_resume(True, str(ckpt))
    # an explicit older checkpoint is the way out: it resumes exactly, and says what it skips
    notes = resolve_resume(str(ckpt / "step-00000002"), None).notes
    assert notes[0].startswith(f"skipping newer {newest}: its .metadata cannot be read")
    assert notes[-1] == f"resuming from {ckpt / 'step-00000002'} (given explicitly)"
    got = train(_cfg(steps=4, resume=str(ckpt / "step-00000002")), quiet=True)
    assert got.start_step == 2 and got.losses == losses[2:]


def test_newest_without_metadata_is_not_replaced_by_the_previous_one(four_steps, tmp_path):
    ckpt, _ = _copy(four_steps, tmp_path)
    (ckpt / "latest").unlink()
    (ckpt / "step-00000004" / ".metadata").unlink()
    with pytest.raises(ValueError, match=r"newest checkpoint .*step-00000004 is unreadable"):
        resolve_resume(True, str(ckpt))
    with pytest.raises(ValueError, match="step-00000004"):
        resolve_resume(str(ckpt), None)  # a folder given as the path: same rule
    with pytest.raises(ValueError, match="cannot load this checkpoint"):
        resolve_resume(str(ckpt / "step-00000004"), None)
    assert resolve_resume(True, str(tmp_path / "empty")).path is None  # nothing yet: fresh


def test_resume_says_what_it_loads_and_skips(four_steps, tmp_path, capsys):
    ckpt, _ = _copy(four_steps, tmp_path)
    (ckpt / ".tmp-step-00000006").mkdir()  # an interrupted save
    rc = main(ARGS + ["--steps", "5", "--checkpoint-dir", str(ckpt), "--resume"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"skipping {ckpt / '.tmp-step-00000006'}: an interrupted save" in out
    assert f"resuming from {ckpt / 'step-00000004'}" in out
    assert "resumed from" in out and "at step 4" in out
    assert "step 5/5" in out and f"saved {ckpt / 'step-00000005'}" in out


def test_final_weights_are_saved_once(tmp_path, capsys):
    # --checkpoint-dir without --checkpoint-every: the end is saved
    train(_cfg(steps=3, checkpoint_dir=str(tmp_path / "a")))
    assert latest_checkpoint(tmp_path / "a").name == "step-00000003"
    # --steps not a multiple of --checkpoint-every: the end is saved too
    train(_cfg(steps=5, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=2,
               keep_checkpoints=5))
    assert _names(tmp_path / "b") == ["latest", "step-00000002", "step-00000004",
                                      "step-00000005"]
    capsys.readouterr()
    # the last step just saved by the schedule is not saved twice
    train(_cfg(steps=4, checkpoint_dir=str(tmp_path / "c"), checkpoint_every=2))
    saves = [line for line in capsys.readouterr().out.splitlines() if line.startswith("saved")]
    assert saves == [f"saved {tmp_path / 'c' / 'step-00000002'}",
                     f"saved {tmp_path / 'c' / 'step-00000004'}"]


def test_resume_at_or_past_steps_says_so(four_steps, tmp_path, capsys):
    ckpt, _ = _copy(four_steps, tmp_path)
    for steps in ("4", "3"):
        rc = main(ARGS + ["--steps", steps, "--checkpoint-dir", str(ckpt), "--resume"])
        err = capsys.readouterr().err
        assert rc == 0
        assert f"nothing to train: the checkpoint is at step 4 and --steps is {steps}" in err
    assert latest_checkpoint(ckpt).name == "step-00000004"


def test_metrics_are_truncated_to_the_resumed_step(four_steps, tmp_path):
    ckpt, losses = _copy(four_steps, tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    train(_cfg(steps=4, metrics=str(metrics)), quiet=True)
    train(_cfg(steps=4, metrics=str(metrics), resume=str(ckpt / "step-00000002")), quiet=True)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == losses
