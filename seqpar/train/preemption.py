"""Stopping on SIGTERM / SIGINT: finish the step, agree, save, exit non-zero.

Schedulers send SIGTERM before they kill a job; a person presses Ctrl-C. On
the first of either signal a rank only records it. At the end of every step
the ranks agree with one tiny all-reduce (MAX of the recorded signal), so all
of them stop after the same step even when only some got the signal, and
nobody waits in a collective the others skip. The loop then saves a
checkpoint (when it has a directory) and raises :class:`Preempted`, whose exit
status is ``128 + signal`` (143 for SIGTERM, 130 for SIGINT).

A second signal ends the process at once (default action of the signal).
A copy arriving within :data:`DUPLICATE_S` of the first counts as the same
one: Ctrl-C reaches every rank from the terminal and again from a launcher
that forwards it. Once a stop is agreed and that window has passed since
this rank's own first signal, the default action is restored outright, so a
second signal works even while the rank is blocked inside a collective or a
checkpoint write. (A rank that has not had a signal itself keeps the handler:
a copy forwarded to it late is then its first, not a reason to die mid-save.)

Handlers are installed only around ``train()`` and only in the main thread
(Python allows no other); the previous handlers come back on exit.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DUPLICATE_S = 1.0


class Preempted(SystemExit):
    """The run stopped on a signal after step ``step`` (checkpoint at ``checkpoint``
    when a checkpoint directory was set). ``code`` is ``128 + signum``: uncaught,
    the process exits 143 (SIGTERM) or 130 (SIGINT)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, result=None):
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint, self.result = signum, step, checkpoint, result

    def __str__(self) -> str:
        where = f"checkpoint {self.checkpoint}" if self.checkpoint else "no checkpoint directory"
        return (f"stopped by {signal.Signals(self.signum).name} after step {self.step} "
                f"({where}); exit status {self.code}")


class StopOnSignal:
    """Context manager recording the first SIGTERM/SIGINT; :meth:`agreed` is the
    per-step vote."""

    def __init__(self) -> None:
        self.signum = 0
        self._first = 0.0
        self._previous: dict[int, object] = {}
        self._host_group = None  # gloo over the world, for GPU runs (see agreed)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first = signum, now
            return
        if now - self._first < DUPLICATE_S:
            return  # the same interruption, delivered twice
        _die(signum)

    def agreed(self, device: torch.device) -> int:
        """The signal any rank got (0: none). Collective over the world, called by every
        rank once per step. On a GPU it runs over a gloo group of host tensors (made at
        the first call), so the vote waits for the other ranks' hosts, never for this
        GPU's queued work: the step stays free of device syncs."""
        mine = self.signum
        signum = mine
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            group = None
            if device.type != "cpu":
                if self._host_group is None:
                    self._host_group = dist.new_group(backend="gloo")
                group = self._host_group
            flag = torch.tensor([mine], dtype=torch.int32)  # host memory
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            signum = int(flag.item())
        if mine and self._previous and time.monotonic() - self._first >= DUPLICATE_S:
            for s in SIGNALS:  # from here a second signal ends the process in any state
                signal.signal(s, signal.SIG_DFL)
        return signum


def _die(signum: int) -> None:
    """End this process now, by the signal's default action."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
