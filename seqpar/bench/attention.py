"""``seqpar bench attention``: fwd+bwd throughput of every strategy and layout, side by side
with PyTorch's ``context_parallel`` and the single-GPU SDPA ceiling, in one run.

Why one run: GPU clocks, NCCL versions and neighbours on the machine move
numbers by more than the gaps we care about (issue 5 asks for >= 1.05x the
peer), so every number in a table is measured by the same processes on the
same devices within minutes of each other. DESIGN.md §8 fixes the FLOP count
(``report.FLOPS_RULE``) and what "ceiling" means (``report.CEILING_RULE``).

Launch: under torchrun (RANK/WORLD_SIZE set) each process is one rank (NCCL on
GPUs); otherwise the command spawns ``--nproc`` ranks itself (gloo on CPU,
where the defaults are tiny so CI runs it in seconds). Rank 0 prints progress
and the table and writes the JSON after every variant, so a run cut short by
``--max-minutes`` or a killed job still leaves its results.

The pieces: ``options`` (command line), ``grid`` (the runner registry and the
variant order), ``runners/`` (what is timed: seqpar, the peer, the ceiling),
``measure`` (probe, warm-up, timing, peak memory), ``check`` (numerics),
``record`` and ``report`` (JSON, tables); this module runs the grid.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..kernels import SELECTOR
from ..launch import leaving_group_after
from ..utils.numerics import DTYPES
from . import launch
from .agree import any_rank, from_rank0
from .check import Reference, compute_reference
from .grid import RUNNERS, variants_for
from .launch import Dist
from .measure import Budget, measure
from .options import parse_args as _parse_args
from .options import parse_lengths
from .outcome import free_memory, guarded
from .problem import Problem, Variant
from .record import kernel_choice, kernel_header, new_record, progress_line, run_meta
from .report import CEILING_RULE, FLOPS_RULE, format_table, human_length, write_json
from .runners.base import RunContext, Runner
from .runners.ours import hybrid_shape, hybrid_sizes, plan_pairs

__all__ = ["AttentionBench", "hybrid_shape", "hybrid_sizes", "main", "parse_args",
           "parse_lengths", "plan_pairs", "variants_for"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with device-dependent defaults and the registered runners' options."""
    return _parse_args(argv, RUNNERS)


class AttentionBench:
    """Runs the grid on this rank; every rank executes the same sequence of collectives."""

    def __init__(self, args: argparse.Namespace, d: Dist):
        self.args, self.d = args, d
        self.ctx = RunContext(args, d, DTYPES[args.dtype])
        self.runners: dict[str, Runner] = {cls.name: cls(self.ctx) for cls in RUNNERS}
        self.budget = Budget(args, d.world)
        self.records: list[dict] = []
        self.meta = run_meta(args, d, self.ctx.dtype)

    def _save(self) -> None:
        if self.d.rank == 0:
            self.meta["elapsed_s"] = round(self.budget.elapsed(), 1)
            write_json(self.args.out, self.meta, self.records)

    # ------------------------------------------------------------ one variant

    def _run_variant(self, p: Problem, v: Variant, ref: Reference) -> dict:
        d = self.d
        runner = self.runners[v.runner]
        rec = new_record(p, v, d.world)
        skip = runner.skip(p, v)
        if skip is None:
            budget = self.budget.reason(self.budget.predict_seconds(p, v.name))
            if from_rank0(d, budget is not None):  # rank 0's clock decides for all
                skip = ("skipped", budget or "time budget (decided by rank 0)")
        if skip is not None:
            rec.update(status=skip[0], reason=skip[1])
            return rec
        built, status, why = guarded(d, lambda: runner.setup(p, v))
        if status != "ok":
            rec.update(status=status, reason=why)
            return rec
        try:
            status, why = measure(runner, built, p, ref, rec, self.budget)
        finally:
            built.stack.close()
            del built
            free_memory(d)
        rec["status"], rec["reason"] = status, why
        if status == "ok":
            self.budget.rates[(v.name, p.causal)] = rec["tflops_per_gpu"]
        return rec

    # ------------------------------------------------------------ the grid

    def run(self) -> int:
        args, d, ctx = self.args, self.d, self.ctx
        for runner in self.runners.values():
            runner.prepare()
        ctx.say(
            f"seqpar bench attention: P={d.world} ({d.backend}) on {self.meta['gpu'] or 'CPU'}, "
            f"torch {torch.__version__}; B={args.batch} Hq={args.heads} Hkv={args.kv_heads} "
            f"D={args.head_dim} {args.dtype}; L={[human_length(n) for n in args.seq_lens]}; "
            f"budget {args.max_minutes or 'none'} min\n  FLOPs: {FLOPS_RULE}\n"
            f"  ceiling: {CEILING_RULE}\n{kernel_header()}")
        variants = variants_for(args, d.world)
        for length in args.seq_lens:
            for hkv in args.kv_heads:
                for causal in args.masks:
                    p = Problem(args.batch, args.heads, hkv, args.head_dim, length, causal,
                                ctx.dtype)
                    self._run_problem(p, variants)
        self._save()
        failed = [r["name"] + f" ({r['L']}, hkv={r['hkv']}, causal={r['causal']})"
                  for r in self.records
                  if (r.get("check") or {}).get("ok") is False
                  or (r["kind"] == "seqpar" and r["status"] == "error")]
        if d.rank == 0:
            print("\n" + format_table(self.records, self.meta), flush=True)
            print(f"results: {os.path.abspath(args.out)}", flush=True)
            from .plot import save_plot

            try:
                if save_plot(self.records, self.meta, args.plot):
                    print(f"plot: {os.path.abspath(args.plot)}", flush=True)
            except Exception as exc:  # noqa: BLE001 - a plot problem must not lose the run
                print(f"plot failed: {exc}", flush=True)
            if failed:
                print("FAILED numerics checks or errors in seqpar variants: "
                      + "; ".join(failed), flush=True)
        return 1 if any_rank(d, bool(failed)) else 0

    def _run_problem(self, p: Problem, variants: list[Variant]) -> None:
        ref = Reference(None, "not checked: out of time budget", False)
        runs_any = any(v.kind != "ceiling" for v in variants)
        if runs_any and from_rank0(self.d, self.budget.reason(0.0) is None):
            ref = compute_reference(self.ctx, p)
        SELECTOR.reset()  # what the problem's seqpar variants choose is reported below
        for v in variants:
            rec = self._run_variant(p, v, ref)
            self.records.append(rec)
            self.ctx.say(progress_line(self.budget.elapsed(), p, rec))
            self._save()
        choice = kernel_choice(p)
        if choice["choices"]:
            self.meta["kernels"].append(choice)
            kernels = ", ".join(f"{'causal' if c['causal'] else 'full'} blocks: {c['kernel']}"
                                for c in choice["choices"])
            self.ctx.say(f"{'':9}{p.label:<22} seqpar block kernels: {kernels}")
            self._save()
        ref = None
        free_memory(self.d)


def worker(args: argparse.Namespace) -> int:
    """One rank: join the group, run the grid, leave the group."""
    d = launch.init_from_env(args.timeout)
    with leaving_group_after():
        return AttentionBench(args, d).run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``seqpar bench attention``; returns the exit code (1 on a numerics
    failure or an error in a seqpar variant, 0 otherwise: OOM and skips are results)."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if launch.under_torchrun():
        return worker(args)
    nproc = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    return launch.spawn(worker, nproc, args)


if __name__ == "__main__":
    sys.exit(main())
