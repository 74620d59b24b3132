"""`seqpar demo` end to end: every strategy within tolerance, the work table printed."""

from __future__ import annotations

import subprocess
import sys

import seqpar


def test_demo_runs_every_strategy():
    cmd = [sys.executable, "-m", "seqpar.cli", "demo", "--nproc", "2", "--seq-len", "64",
           "--heads", "4", "--head-dim", "8"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split() for line in res.stdout.splitlines()]
    for strategy in seqpar.STRATEGIES:
        name = "hybrid2xR" if strategy == "hybrid" else strategy
        for mask in ("full", "causal"):
            row = next(r for r in rows if r[:2] == [name, mask])
            assert row[3] == "yes" and float(row[2]) <= 1e-5, row
    assert "zigzag" in res.stdout and "max/min 1.00" in res.stdout
