"""Rank functions for tests/test_launcher.py, standard library only: a spawned rank
that imports neither torch nor seqpar starts in a fraction of a second."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _stoppable_rank(out: str, save_s: float) -> int:
    """Install SIGTERM/SIGINT handlers, say ready, wait for a signal, 'save' for
    ``save_s`` seconds (later signals only recorded), then exit non-zero."""
    out_dir, rank = Path(out), int(os.environ["RANK"])
    got: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: got.append(s))
    (out_dir / f"ready-{rank}").write_text(str(os.getpid()))
    while not got:
        time.sleep(0.02)
    (out_dir / f"got-{rank}").write_text(signal.Signals(got[0]).name)
    end = time.monotonic() + save_s
    while time.monotonic() < end:
        time.sleep(0.02)
    (out_dir / f"saved-{rank}").write_text(str(len(got)))
    return 3


def _failing_rank() -> None:
    """Rank 1 fails first with a multi-line message; the others fail later."""
    if os.environ["RANK"] == "1":
        raise ValueError("bad value\non two lines")
    time.sleep(1.0)
    raise RuntimeError("peer gone")


def _sleeping_rank() -> None:
    time.sleep(120)
