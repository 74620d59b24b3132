"""``seqpar bench paper``: the paper's experiments (SP vs Megatron TP on BERT) as one command.

Examples::

    seqpar bench paper --tiny                                  # CPU, 4 gloo ranks, CI size
    seqpar bench paper --gpu-memory-gib 16 --out runs/paper     # every local GPU, P = 1, 2, ..
    seqpar bench paper --from-json runs/paper/paper.json        # tables and plots again

Writes ``paper.json``, ``paper.txt`` (the tables) and ``paper_<model>.png`` under ``--out``.
docs/paper.md explains each experiment and how to read the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict, replace

import torch

from ...models import SIZES, model_config
from .experiments import Plan
from .trial import BERT_VOCAB, DTYPES, METHODS

TINY = dict(models=("bert-tiny",), vocab_size=128, batch_len=64, fixed_batch=2, len_granule=8,
            weak_batch=2, weak_len=32, max_batch=256, max_len=1 << 14, max_trials=7,
            linformer_k=16)
TINY_CAP_GIB = 0.004  # simulated: ~4 MiB, so the tiny searches end within a few trials


def _ints(text: str, what: str) -> tuple[int, ...]:
    err = f"seqpar bench paper: error: {what} must be positive integers, got {text!r}"
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(err) from None
    if not vals or min(vals) < 1:
        raise SystemExit(err)
    return vals


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqpar bench paper", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU-sized shapes (bert-tiny) for CI")
    p.add_argument("--from-json", metavar="PATH", help="print tables / write plots of a run")
    p.add_argument("--gpu-memory-gib", type=float, default=None,
                   help="per-GPU memory cap (16 stands for the paper's 16 GB P100); "
                        "simulated on CPU")
    p.add_argument("--models", default="bert-base,bert-large")
    p.add_argument("--out", default="paper_out", help="output folder")
    p.add_argument("--nproc", type=int, default=None,
                   help="ranks (default: every GPU, or 4 CPU processes)")
    p.add_argument("--gpus", default=None, help="P values (default 1, 2, 4, .. up to --nproc)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--experiments", default="1,2,3,4")
    p.add_argument("--batch-len", type=int, default=None, help="experiment 1's length (512)")
    p.add_argument("--batch-start", type=int, default=None,
                   help="experiment 1's search starts at this batch (1)")
    p.add_argument("--fixed-batch", type=int, default=None, help="experiment 2's batch (64)")
    p.add_argument("--weak-batch", type=int, default=None, help="experiment 3's batch at P=1")
    p.add_argument("--weak-len", type=int, default=None, help="experiment 3's length at P=1")
    p.add_argument("--max-trials", type=int, default=None, help="trials per search")
    p.add_argument("--search-seconds", type=float, default=0.0,
                   help="stop a search after this long (its maximum is then a lower bound)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="overall time budget")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per trial (>= 2: "
                   "the second holds Adam's states, the true peak)")
    p.add_argument("--no-checkpointing", action="store_true",
                   help="no activation checkpointing (on both sides)")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--linformer-k", type=int, default=None,
                   help="experiment 4: Linformer's projected length (256)")
    return p


def make_plan(args: argparse.Namespace, nproc: int) -> Plan:
    """The validated :class:`Plan`; SystemExit naming the bad value otherwise."""
    def fail(msg: str):
        raise SystemExit(f"seqpar bench paper: error: {msg}")

    base = Plan(models=(), gpus=(), methods=())
    if args.tiny:
        base = replace(base, **TINY)
    models = base.models if args.tiny and args.models == "bert-base,bert-large" else tuple(
        m.strip() for m in args.models.split(",") if m.strip())
    for m in models:
        if m not in SIZES:
            fail(f"unknown model {m!r}; choose from {tuple(SIZES)}")
        if model_config(m).causal:
            fail(f"model {m!r} is a causal decoder; the paper's experiments are BERT encoders")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        fail(f"unknown methods {bad}; choose from {METHODS}")
    gpus = _ints(args.gpus, "--gpus") if args.gpus else tuple(
        p for p in (1, 2, 4, 8, 16, 32, 64) if p <= nproc)
    if max(gpus) > nproc:
        fail(f"--gpus {max(gpus)} is more than the {nproc} ranks (--nproc)")
    exps = _ints(args.experiments, "--experiments")
    if set(exps) - {1, 2, 3, 4}:
        fail(f"--experiments {args.experiments}: choose from 1,2,3,4")
    over = {k: getattr(args, k) for k in ("batch_len", "batch_start", "fixed_batch",
                                          "weak_batch", "weak_len", "max_trials",
                                          "linformer_k")
            if getattr(args, k) is not None}
    for k, v in over.items():
        if v < 1:
            fail(f"--{k.replace('_', '-')} must be positive, got {v}")
    if args.steps < 1:
        fail(f"--steps must be positive, got {args.steps}")
    return replace(base, models=models, gpus=gpus, methods=methods, experiments=exps,
                   search_seconds=args.search_seconds, max_minutes=args.max_minutes,
                   steps=args.steps, checkpointing=not args.no_checkpointing,
                   dtype=args.dtype, vocab_size=base.vocab_size if args.tiny else BERT_VOCAB,
                   **over)


def _rank_main(device: torch.device, plan: Plan, cap_gib: float | None, out_dir: str,
               meta: dict, hooks: tuple | None = None) -> int:
    import torch.distributed as dist

    from ..launch import Dist
    from .experiments import run
    from .memory_cap import MemoryCap
    from .trial import TrialContext

    d = Dist(dist.get_rank(), dist.get_world_size(), device.index or 0, device,
             dist.get_backend())
    if d.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # same on both sides; see docs/paper.md
        torch.backends.cudnn.allow_tf32 = True
    cap = MemoryCap(cap_gib, device)
    cap.apply()
    ctx = TrialContext(d, cap, list(plan.gpus))
    factory, wire = hooks or (None, None)
    meta = {**meta, "cap": cap.describe(), "device": _device_name(device), "world_size": d.world}

    def save_partial(results: dict) -> None:
        if d.rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "paper.partial.json"), "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=1)

    results = run(ctx, plan, factory, wire, progress=save_partial)
    if d.rank == 0:
        finish({"meta": meta, "results": results}, out_dir, cap.cap_bytes)
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def finish(data: dict, out_dir: str, cap_bytes: int | None) -> None:
    """Fit the memory model, write JSON, tables and plots, print the tables."""
    from .memory_model import model_report
    from .plot import MISSING, save_plots
    from .reported import REPORTED, SOURCE
    from .table import render

    plan = data["meta"]["plan"]
    cap = cap_bytes or 16 * 2**30  # without a cap the extrapolation uses the paper's 16 GB
    data["memory_model"] = model_report(data["results"], cap, fixed_batch=plan["fixed_batch"],
                                        batch_len=plan["batch_len"])
    data["reported"] = {"source": SOURCE, **REPORTED}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "paper.json"), "w") as f:
        json.dump(data, f, indent=1)
    text = render(data)
    with open(os.path.join(out_dir, "paper.txt"), "w") as f:
        f.write(text + "\n")
    print(text)
    paths = save_plots(data, out_dir)
    print("plots: " + (", ".join(paths) if paths else MISSING))


def main(argv: list[str] | None = None, *, factory=None, wire=None) -> int:
    """The command. ``factory``/``wire``: experiment 4's Linformer hooks (see
    :func:`seqpar.bench.paper.experiments.linformer`)."""
    args = parser().parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
        os.makedirs(args.out, exist_ok=True)
        from .plot import MISSING, save_plots
        from .table import render

        print(render(data))
        paths = save_plots(data, args.out)
        print("plots: " + (", ".join(paths) if paths else MISSING))
        return 0
    cuda = torch.cuda.is_available() and not args.tiny
    nproc = args.nproc or (torch.cuda.device_count() if cuda else 4)
    if nproc < 1:
        raise SystemExit(f"seqpar bench paper: error: --nproc must be positive, got {nproc}")
    plan = make_plan(args, nproc)
    cap_gib = args.gpu_memory_gib
    if cap_gib is None and args.tiny:
        cap_gib = TINY_CAP_GIB
    if cap_gib is not None:
        if not cap_gib > 0:
            raise SystemExit(f"seqpar bench paper: error: --gpu-memory-gib must be positive, "
                             f"got {cap_gib}")
        if cuda:
            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            if cap_gib > total:
                raise SystemExit(f"seqpar bench paper: error: --gpu-memory-gib {cap_gib:g} is "
                                 f"larger than this GPU's {total:.1f} GiB")
    meta = {"command": "seqpar bench paper " + shlex.join(sys.argv[1:] if argv is None
                                                           else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "plan": asdict(plan)}
    from ... import launch

    backend = None if cuda else "gloo"
    if factory is None and wire is None and 4 in plan.experiments:
        from .linformer_hooks import hooks as linformer_hooks

        factory, wire = linformer_hooks(plan.linformer_k)  # (None, None) without Linformer
    hooks = (factory, wire) if factory or wire else None
    # a rank that ran out of memory alone while its peers wait in a collective fails
    # the run after this long instead of holding the GPUs for c10d's default
    return launch.run(_rank_main, nproc, plan, cap_gib, args.out, meta, hooks,
                      prog="seqpar bench paper", backend=backend,
                      timeout=datetime.timedelta(seconds=180))


if __name__ == "__main__":
    sys.exit(main())
