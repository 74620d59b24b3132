"""Spawning local ranks: start, watch, pass signals on, report the first failure.

One policy for every command and the tests:

* **Failure.** A rank that raises writes its traceback to ``RUN_DIR/rank-R.log``
  (see :mod:`seqpar.launch.child`); the other ranks get ``failure_grace_s`` to
  end on their own (their collectives fail), then are killed. The launcher
  prints one line, ``<prog>: error: rank R: <Type>: <message> (full log: PATH)``,
  for the rank that failed first, and returns non-zero.
* **Signals.** SIGTERM or SIGINT to the launcher is sent on, once, to every rank
  (they run in their own session, so a terminal's Ctrl-C does not reach them
  twice). The ranks get ``signal_grace_s`` to finish (e.g. save a checkpoint)
  and exit; then they are killed. A second signal kills them at once. Either
  way the launcher returns ``128 + signal``.
* **Logs.** Each run's folder is a fresh ``<prog>-XXXX`` under ``$SEQPAR_LOG_DIR``
  (default: the temp folder); it is removed when no rank failed.
* **Hangs.** With ``deadline_s`` every rank still running then is killed and
  reported in :attr:`Outcome.hung`.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import child
from .child import BOOT, boot_info, record_failure
from .group import cpu_threads, free_port

#: Seconds the other ranks get to end on their own after one rank failed.
FAILURE_GRACE_S = 10.0
#: Seconds the ranks get to stop (finish a step, save) after SIGTERM/SIGINT.
SIGNAL_GRACE_S = 120.0


@dataclass
class Failure:
    """One rank that ended badly: its summary line and, if it wrote one, its log."""

    rank: int
    code: int
    summary: str
    log: Path | None
    time: float


@dataclass
class Outcome:
    """How a spawned run ended. ``code`` is 0 only if every rank returned 0."""

    code: int
    failures: list[Failure] = field(default_factory=list)  # first failure first
    hung: list[int] = field(default_factory=list)
    signal: int | None = None
    log_dir: Path | None = None

    def error_line(self, prog: str) -> str | None:
        if not self.failures:
            return None
        f = self.failures[0]
        where = f" (full log: {f.log})" if f.log else ""
        return f"{prog}: error: rank {f.rank}: {f.summary}{where}"


def _exit_summary(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _failures(run_dir: Path, codes: list[int], seen: dict[int, float],
              ignore: set[int]) -> list[Failure]:
    out = []
    for rank, code in enumerate(codes):
        record = run_dir / f"rank-{rank}.json"
        log = run_dir / f"rank-{rank}.log"
        if record.exists():
            info = json.loads(record.read_text())
            out.append(Failure(rank, code, info["summary"], log if log.exists() else None,
                               info["time"]))
        elif code not in (0, None) and rank not in ignore:
            out.append(Failure(rank, code, _exit_summary(code), None, seen.get(rank, 0.0)))
    return sorted(out, key=lambda f: (f.time, f.rank))


class _Signals:
    """SIGTERM/SIGINT handlers for the launcher while its ranks run: the first signal
    goes on to every rank once, a second one kills them."""

    def __init__(self, procs: list[subprocess.Popen]):
        self.procs, self.received, self.previous = procs, [], {}
        self.told: set[int] = set()  # pids that got the first signal

    def __enter__(self):
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def send(self, sig: int) -> None:
        for p in self.procs:
            if p.returncode is None and (sig == signal.SIGKILL or p.pid not in self.told):
                self.told.add(p.pid)
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def pass_on(self) -> None:
        """Send what was received: the first signal to ranks not told yet, or SIGKILL."""
        if self.received:
            self.send(self.received[0] if len(self.received) == 1 else signal.SIGKILL)

    def _on_signal(self, signum, frame) -> None:
        self.received.append(signum)
        self.pass_on()


def _start(run_dir: Path, nproc: int, env: dict[str, str] | None) -> list[subprocess.Popen]:
    port, threads = free_port(), cpu_threads(nproc)
    procs = []
    for rank in range(nproc):
        child_env = {**os.environ, **(env or {}),
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                     "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank),
                     "LOCAL_WORLD_SIZE": str(nproc), "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-c", BOOT, child.__file__, str(run_dir), str(rank)]
        procs.append(subprocess.Popen(cmd, env=child_env, start_new_session=True))
    return procs


def _run_dir(prog: str | None) -> Path:
    base = os.environ.get("SEQPAR_LOG_DIR")  # e.g. a folder that outlives /tmp
    if base:
        os.makedirs(base, exist_ok=True)
    slug = (prog or "seqpar").replace(" ", "-")
    return Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=base or None))


def run_here(fn: Callable[..., int | None], *args, prog: str = "seqpar") -> int:
    """Run ``fn(*args)`` in this process (a one-rank run) with the same one-line
    failure report as spawned ranks; returns the exit code."""
    try:
        return int(fn(*args) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # e.g. train.preemption.Preempted: 143 (SIGTERM) / 130 (SIGINT)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise
    except BaseException as exc:  # noqa: BLE001 - one line, traceback in the log (DCP's
        # CheckpointException is a BaseException)
        run_dir = _run_dir(prog)
        record_failure(run_dir, 0, exc)
        failures = _failures(run_dir, [1], {}, set())
        print(Outcome(1, failures).error_line(prog), file=sys.stderr, flush=True)
        return 1


def spawn(fn: Callable[..., int | None], nproc: int, *args, prog: str | None = "seqpar",
          failure_grace_s: float = FAILURE_GRACE_S, signal_grace_s: float = SIGNAL_GRACE_S,
          deadline_s: float | None = None, env: dict[str, str] | None = None) -> Outcome:
    """Run ``fn(*args)`` (picklable, importable) on ``nproc`` fresh local ranks.

    Each rank's environment is what torchrun would set (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR/PORT``) plus the CPU
    thread count; ``fn`` joins the group itself (see :func:`~seqpar.launch.run`).
    ``fn``'s return value is the rank's exit code. With ``prog`` set, the first
    failure (or the signal that stopped the run) is printed as one line to stderr.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    run_dir = _run_dir(prog)
    (run_dir / "boot.json").write_text(json.dumps(boot_info()))
    with open(run_dir / "payload.pkl", "wb") as fh:
        pickle.dump((fn, args), fh)
    procs: list[subprocess.Popen] = []
    seen: dict[int, float] = {}  # rank -> when we saw it end badly
    killed: set[int] = set()
    hung: list[int] = []
    start = time.monotonic()
    failed_at = signalled_at = None
    with _Signals(procs) as sigs:
        try:
            procs += _start(run_dir, nproc, env)
            sigs.pass_on()  # a signal while the ranks started: the late ones get it too
            while True:
                codes = [p.poll() for p in procs]
                if all(c is not None for c in codes):
                    break
                now = time.monotonic()
                for rank, c in enumerate(codes):
                    if c not in (None, 0):
                        seen.setdefault(rank, time.time())
                alive = [r for r, c in enumerate(codes) if c is None]
                if sigs.received and signalled_at is None:
                    signalled_at = now
                    if prog:
                        name = signal.Signals(sigs.received[0]).name
                        print(f"{prog}: {name}: passed to {nproc} ranks; waiting up to "
                              f"{signal_grace_s:.0f} s for them to stop (again: kill now)",
                              file=sys.stderr, flush=True)
                if failed_at is None and seen and not sigs.received:
                    failed_at = now
                late = ((failed_at is not None and now - failed_at > failure_grace_s)
                        or (signalled_at is not None and now - signalled_at > signal_grace_s))
                if deadline_s is not None and now - start > deadline_s:
                    hung, late = alive, True
                if late or len(sigs.received) > 1:
                    killed.update(alive)
                    sigs.send(signal.SIGKILL)
                time.sleep(0.05)
        finally:  # whatever ended the loop (even an error here), no rank outlives it
            for p in procs:
                if p.poll() is None:
                    p.kill()
            codes = [p.wait() for p in procs]
    received = sigs.received[0] if sigs.received else None
    failures = _failures(run_dir, codes, seen, killed)
    if received is not None:
        failures = [f for f in failures if f.log is not None]
    bad = [c for c in codes if c != 0]
    code = 128 + received if received else (0 if not bad else (max(bad) if max(bad) > 0 else 1))
    if code == 0 and hung:
        code = 1
    out = Outcome(code, failures, hung, received, run_dir if failures else None)
    (run_dir / "payload.pkl").unlink(missing_ok=True)
    if not failures:
        shutil.rmtree(run_dir, ignore_errors=True)
    if prog:
        line = out.error_line(prog)
        if line:
            print(line, file=sys.stderr, flush=True)
        if received:
            print(f"{prog}: stopped by {signal.Signals(received).name}", file=sys.stderr,
                  flush=True)
        elif hung:
            print(f"{prog}: error: ranks {hung} still running after {deadline_s:.0f} s "
                  "(hang); killed", file=sys.stderr, flush=True)
    return out
