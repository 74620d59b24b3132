"""Training configuration: ParallelDims errors, the LR schedule, TOML and command-line
precedence, bad configurations refused before spawning."""

from __future__ import annotations

import pytest

from seqpar.models import model_config
from seqpar.parallel import ParallelDims
from seqpar.train import TrainConfig
from seqpar.train.cli import load_toml, main, parse_config
from seqpar.train.loop import lr_at


def test_parallel_dims_errors_list_every_degree():
    with pytest.raises(ValueError) as err:
        ParallelDims(dp=2, sp=3, tp=2).validate(8)
    msg = str(err.value)
    assert all(s in msg for s in ("dp=2", "sp=3", "tp=2", "12", "world size 8"))
    cfg = model_config("tiny")
    with pytest.raises(ValueError, match="n_kv_heads=2 is not divisible by tp=4"):
        ParallelDims(sp=1, tp=4).validate(4, model=cfg)
    with pytest.raises(ValueError, match="splits heads 8 ways"):
        ParallelDims(sp=8, strategy="ulysses").validate(8, model=cfg)
    with pytest.raises(ValueError, match="divisible by 8"):
        ParallelDims(sp=4, layout="zigzag").validate(4, seq_len=100)
    with pytest.raises(ValueError, match="batch_size=3"):
        ParallelDims(dp=2, sp=2).validate(4, batch_size=3)
    with pytest.raises(ValueError, match="unknown strategy"):
        ParallelDims(strategy="magic").validate(1)
    with pytest.raises(ValueError, match="hybrid"):
        ParallelDims(sp=4, strategy="hybrid", ulysses=2, ring=3).validate(4)
    ParallelDims(dp=2, sp=2, tp=1, layout="zigzag").validate(4, model=cfg, seq_len=64,
                                                            batch_size=4)


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_toml_config_and_command_line_precedence(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "tiny"\nseq-len = 256\nsteps = 7\n[train]\nlr = 0.5\n')
    cfg = parse_config(["--config", str(path), "--steps", "9", "--no-fsdp", "--resume"])
    assert (cfg.seq_len, cfg.steps, cfg.lr, cfg.fsdp, cfg.resume) == (256, 9, 0.5, False, True)
    (tmp_path / "bad.toml").write_text("sequence_length = 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_toml(tmp_path / "bad.toml")


@pytest.mark.parametrize("argv, needle", [
    (["--sp", "3", "--seq-len", "100", "--nproc", "3"], "divisible by 6"),
    (["--dp", "2", "--sp", "2", "--tp", "2", "--nproc", "4"], "world size 4"),
    (["--strategy", "ulysses", "--sp", "8"], "ulysses"),
    (["--strategy", "hybrid", "--sp", "4", "--ulysses", "3"], "ulysses*ring == sp"),
    (["--tp", "4", "--sp", "1", "--nproc", "4"], "not divisible by tp=4"),
    (["--model", "nope"], "unknown model size"),
])
def test_cli_rejects_bad_configs_before_spawning(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
