"""``seqpar train`` memory-related options (issue 13).

So far: ``--vocab-size`` (a model vocabulary larger than the data's, so the loss
head has a realistic size while the built-in data keeps its byte token ids).
"""

from __future__ import annotations

import pytest

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
