"""`seqpar train` end to end: spawning local gloo processes, TOML config, metrics file."""

from __future__ import annotations

import json

from seqpar.train.cli import main


def test_cli_spawns_trains_and_writes_metrics(tmp_path, capfd):
    config = tmp_path / "run.toml"
    config.write_text('seq-len = 64\nbatch-size = 2\nstrategy = "allgather"\nsteps = 50\n')
    metrics = tmp_path / "m" / "metrics.jsonl"
    rc = main(["--config", str(config), "--steps", "3", "--nproc", "2", "--layout", "zigzag",
               "--metrics", str(metrics), "--checkpoint-dir", str(tmp_path / "ckpt"),
               "--checkpoint-every", "3", "--log-every", "1"])
    assert rc == 0
    out = capfd.readouterr().out
    assert "sp=2" in out and "allgather" in out and "summary: 3 steps" in out
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in records)
    assert (tmp_path / "ckpt" / "step-00000003" / ".metadata").exists()
