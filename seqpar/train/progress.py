"""What a run shows and records: the progress line, the metrics file, the summary.

Rank 0 prints (unless quiet) and writes the metrics; every rank keeps the same
:class:`TrainResult`, since every value in it is a global one.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from .step import StepOutput, resolve_all


@dataclass
class TrainResult:
    """Per-step history and the end-of-run summary (identical on every rank)."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    start_step: int = 0
    tokens_per_s: float = 0.0
    peak_memory_mb: list[float] = field(default_factory=list)
    chance: float = 0.0
    final_accuracy: float = 0.0
    #: causal_mfu / hardware_mfu of ``tokens_per_s`` (when a peak is known), else empty
    mfu: dict = field(default_factory=dict)


class Metrics:
    """One JSON line per step (and TensorBoard when installed), rank 0 only.

    Opening truncates the file to the rows of steps ``<= start`` (the step the
    run starts or resumes at), so a resumed run does not repeat step rows and
    the file is always this run's history, one row per step.
    """

    def __init__(self, path: str | None, rank: int, start: int = 0):
        self.file = self.tb = None
        if path is None or rank != 0:
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(path, start)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(path).with_suffix("")) + ".tb")
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep the rows of steps ``<= last_step`` (rows that are not JSON are dropped)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Progress:
    """Times steps, keeps the history, prints progress lines and the summary.

    No host sync per step: :meth:`step_done` queues the step's device tensors, and
    the queue is read with one sync at each logged step (every ``log_every``, the
    first and the last; every step on a terminal), at :meth:`flush` (before a
    checkpoint) and at :meth:`finish`. Step times are the window's wall time over
    its steps (a window = the steps between two reads; the first step, which pays
    for warm-up, is a window of its own and not timed). ``mfu(tokens_per_s_per_gpu)``
    -> ``{"causal_mfu": .., "hardware_mfu": ..}`` adds MFU to the line, the metrics
    and the summary (:mod:`seqpar.train.flops`).
    """

    def __init__(self, *, steps: int, start: int, end: int, tokens_per_step: int,
                 log_every: int, show: bool, metrics: Metrics, chance: float = 0.0,
                 world: int = 1, mfu=None):
        self.steps, self.start, self.end = steps, start, end
        self.tokens_per_step, self.log_every = tokens_per_step, log_every
        self.show, self.metrics = show, metrics
        self.tty = show and sys.stdout.isatty()
        self.result = TrainResult(start_step=start, chance=chance)
        self.timed_tokens, self.timed_seconds = 0, 0.0
        self.recent_acc: list[float] = []
        self._t0 = time.perf_counter()
        self._open_line = False
        self.world, self.mfu = max(1, world), mfu
        self._pending: list[tuple[int, StepOutput]] = []
        self._extra: dict[int, dict] = {}  # step -> more metrics fields (a profile)
        self.untimed: set[int] = set()  # steps left out of tokens/s (a profiled one)

    def say(self, text: str, *, err: bool = False) -> None:
        """A line of its own on rank 0 (ends a pending ``\\r`` progress line first)."""
        if not self.show:
            return
        if self._open_line:
            print(flush=True)
            self._open_line = False
        print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def step_started(self) -> None:
        if not self._pending:  # a new window starts with this step
            self._t0 = time.perf_counter()

    def add_metrics(self, step: int, fields: dict) -> None:
        """Extra fields for step ``step``'s metrics row (e.g. its ``--profile-step`` split)."""
        self._extra.setdefault(step, {}).update(fields)

    def step_done(self, step: int, out: StepOutput, device: torch.device) -> None:
        """Queue step ``step`` (0-based); read the queue when this step is a logged one."""
        self._pending.append((step, out))
        done = step + 1
        if (self.tty or done % self.log_every == 0 or done == self.end
                or done == self.start + 1 or step in self.untimed):
            self.flush(device)

    def flush(self, device: torch.device) -> None:
        """Read the queued steps (one host sync): history, metrics rows, progress line."""
        if not self._pending:
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        window = time.perf_counter() - self._t0
        steps = [s for s, _ in self._pending]
        # extra columns a step output may carry (e.g. the pipeline bubble)
        extras = [getattr(o, "metrics", None) or {} for _, o in self._pending]
        outs = resolve_all([o for _, o in self._pending])
        self._pending = []
        dt = window / len(steps)
        n_tokens = self.tokens_per_step
        for step, out, extra in zip(steps, outs, extras, strict=True):
            # the first step pays for warm-up (allocations, plans, compilation)
            if step > self.start and step not in self.untimed:
                self.timed_tokens += n_tokens
                self.timed_seconds += dt
            self.result.losses.append(out.loss)
            self.result.accuracies.append(out.accuracy)
            self.recent_acc = (self.recent_acc + [out.accuracy])[-20:]
            row = {"step": step + 1, "loss": out.loss, "accuracy": out.accuracy,
                   "lr": out.lr, "grad_norm": out.grad_norm,
                   "tokens_per_s": n_tokens / dt, "step_time_s": dt,
                   "labelled_tokens": out.tokens}
            if self.mfu is not None:
                row.update(self.mfu(n_tokens / dt / self.world))
            self.metrics.write({**row, **extra, **self._extra.pop(step, {})})
        step, out, extra = steps[-1], outs[-1], extras[-1]
        done = step + 1
        tps = self.timed_tokens / self.timed_seconds if self.timed_seconds else n_tokens / dt
        if self.show:
            acc = sum(self.recent_acc) / len(self.recent_acc)
            line = (f"{_bar(done, self.steps)} step {done}/{self.steps} | loss {out.loss:.4f} "
                    f"| acc {100 * acc:5.1f}%{_chance(self.result.chance)} | "
                    f"{tps:,.0f} tok/s{self._mfu_text(tps)} | lr {out.lr:.2e}"
                    + (f" | bubble {100 * extra['bubble']:.0f}%" if "bubble" in extra else ""))
            self._open_line = self.tty and done < self.end
            print(("\r" + line) if self.tty else line, end="" if self._open_line else "\n",
                  flush=True)
        self._t0 = time.perf_counter()

    def _mfu_text(self, tps: float) -> str:
        if self.mfu is None:
            return ""
        m = self.mfu(tps / self.world)
        return (f" ({tps / self.world:,.0f}/GPU, causal-MFU {100 * m['causal_mfu']:.1f}%, "
                f"hw {100 * m['hardware_mfu']:.1f}%)")

    def finish(self, device: torch.device, world: int) -> TrainResult:
        """Read the queue, close the metrics, gather peak memory (collective), print the
        summary."""
        self.flush(device)
        self.metrics.close()
        result = self.result
        result.tokens_per_s = (self.timed_tokens / self.timed_seconds
                               if self.timed_seconds else 0.0)
        result.final_accuracy = (sum(self.recent_acc) / len(self.recent_acc)
                                 if self.recent_acc else 0.0)
        if self.mfu is not None and result.tokens_per_s:
            result.mfu = self.mfu(result.tokens_per_s / self.world)
        mem = peak_memory_mb(device)
        if world > 1:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, mem)
            result.peak_memory_mb = [float(m) for m in gathered]
        else:
            result.peak_memory_mb = [mem]
        if result.losses:
            kind = "GPU allocated" if device.type == "cuda" else "RSS"
            self.say(f"summary: {len(result.losses)} steps | final loss {result.losses[-1]:.4f}"
                     f" | accuracy (last 20 steps) {100 * result.final_accuracy:.1f}%"
                     f"{_chance(result.chance)} | {result.tokens_per_s:,.0f} tokens/s"
                     f"{self._mfu_text(result.tokens_per_s)} | "
                     f"peak memory per rank ({kind}, MiB): "
                     + ", ".join(f"{m:.0f}" for m in result.peak_memory_mb))
        return result


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _chance(chance: float) -> str:
    """`` (chance x%)`` for the synthetic tasks; nothing for text (no fixed chance)."""
    return f" (chance {100 * chance:.1f}%)" if chance > 0 else ""
