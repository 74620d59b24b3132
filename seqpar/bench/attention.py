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
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

import seqpar

from ..comm import count_bytes, hybrid_mesh
from ..comm.compat import all_gather_flat
from ..launch import leaving_group_after
from ..layout import Layout, Striped, get_layout
from . import launch
from .agree import agree_outcome, all_max, any_rank, from_rank0, gather_rows
from .launch import Dist
from .peers import (
    SDPA_BACKENDS,
    SdpaStep,
    context_parallel_available,
    expand_kv,
    make_mesh,
    sdpa_backend,
    torch_context_parallel,
)
from .profile import profile_step
from .report import (
    CEILING_RULE,
    FLOPS_RULE,
    TIMING_RULE,
    attention_flops,
    equal_flops_length,
    format_table,
    human_length,
    write_json,
)

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32,
          "fp64": torch.float64, "float64": torch.float64}
#: relative error allowed against the single-device reference, by benchmark dtype
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-4,
             torch.float64: 1e-9}
#: defaults differ by device: GPU = issue 5's grid, CPU = seconds-long smoke run for CI
DEFAULTS = {
    "cuda": dict(seq_lens="32K,128K,512K,1M", heads=32, kv_heads="32,8", head_dim=128,
                 dtype="bf16", warmup=2, iters=5, check_max_len=524288,
                 peer_backends="cudnn,flash", ceiling_backends="cudnn,flash"),
    "cpu": dict(seq_lens="256", heads=4, kv_heads="4,2", head_dim=16, dtype="fp32", warmup=1,
                iters=3, check_max_len=8192, peer_backends="default",
                ceiling_backends="default"),
}
ROTATE_METHODS = ("allgather", "alltoall")
#: environment that changes NCCL behaviour on the H200 machines (see scripts/gpu_bench.sh)
ENV_RECORDED = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
                "CUDA_VISIBLE_DEVICES", "NCCL_ALGO", "NCCL_PROTO")


# ---------------------------------------------------------------- command line

def parse_lengths(text: str) -> list[int]:
    """``"32K,128K,1M"`` -> ``[32768, 131072, 1048576]`` (K = 1024)."""
    out = []
    for part in text.split(","):
        part = part.strip().upper()
        if not part:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20}.get(part[-1], 1)
        out.append(int(float(part[:-1] if mult > 1 else part) * mult))
    if not out or any(n <= 0 for n in out):
        raise argparse.ArgumentTypeError(f"bad length list {text!r}")
    return out


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_layout(name: str) -> Layout:
    """A layout by name; ``striped:B`` is striped in blocks of B tokens."""
    if name.startswith("striped:"):
        return Striped(block=int(name.split(":", 1)[1]))
    return get_layout(name)


def build_parser(device: str) -> argparse.ArgumentParser:
    """Options; defaults depend on ``device`` ("cuda" or "cpu")."""
    dflt = DEFAULTS[device]
    p = argparse.ArgumentParser(
        prog="seqpar bench attention",
        description="fwd+bwd attention throughput: seqpar strategies x layouts vs PyTorch "
                    "context_parallel vs the single-GPU SDPA ceiling, in one run. Run under "
                    "torchrun for GPUs; without torchrun it spawns --nproc ranks itself.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seq-lens", type=parse_lengths, default=dflt["seq_lens"],
                   help="total sequence lengths (K=1024, M=1024K)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=dflt["heads"], help="query heads Hq")
    p.add_argument("--kv-heads", type=_int_list, default=dflt["kv_heads"],
                   help="kv head counts Hkv to run (GQA when < Hq)")
    p.add_argument("--head-dim", type=int, default=dflt["head_dim"])
    p.add_argument("--dtype", choices=sorted(DTYPES), default=dflt["dtype"])
    p.add_argument("--strategies", type=_names, default=",".join(seqpar.STRATEGIES))
    p.add_argument("--layouts", type=_names, default=",".join(seqpar.LAYOUT_NAMES),
                   help="layout names; striped:B = striped in blocks of B tokens")
    p.add_argument("--pairs", type=_names, default=None,
                   help="explicit strategy/layout pairs, e.g. ring/zigzag,ulysses/contiguous "
                        "(instead of --strategies x --layouts)")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--causal", dest="masks", action="store_const", const=[True],
                      help="causal only")
    mask.add_argument("--full", dest="masks", action="store_const", const=[False],
                      help="full (non-causal) only")
    mask.add_argument("--both", dest="masks", action="store_const", const=[True, False],
                      help="causal and full (default)")
    p.set_defaults(masks=[True, False])
    p.add_argument("--no-peer", action="store_true", help="skip torch context_parallel")
    p.add_argument("--peer-backends", type=_names, default=dflt["peer_backends"],
                   help=f"SDPA backends for the peer, from {SDPA_BACKENDS}")
    p.add_argument("--rotate-methods", type=_names, default=",".join(ROTATE_METHODS))
    p.add_argument("--peer-on-cpu", action="store_true",
                   help="try the peer on CPU anyway (torch 2.13: ~1 min of DTensor sharding "
                        "propagation per call, then NotImplementedError)")
    p.add_argument("--hybrid-ulysses", type=_int_list, default=None,
                   help="ulysses size(s) U of the U x R mesh for strategy 'hybrid', e.g. 2,4 on "
                        "8 GPUs runs 2x4 and 4x2 (default: the smallest divisor of P that is "
                        ">= sqrt(P))")
    p.add_argument("--no-ceiling", action="store_true", help="skip the single-device ceiling")
    p.add_argument("--ceiling-backends", type=_names, default=dflt["ceiling_backends"],
                   help=f"SDPA backends for the ceiling, from {SDPA_BACKENDS}")
    p.add_argument("--warmup", type=int, default=dflt["warmup"],
                   help="untimed iterations after the first (probe) iteration")
    p.add_argument("--iters", type=int, default=dflt["iters"], help="timed iterations")
    p.add_argument("--max-variant-seconds", type=float, default=None,
                   help="cap one variant's warm-up + timed iterations (not the probe) to "
                        "about this long: fewer iterations, at least 1 timed")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget: stop starting variants that would not finish in it "
                        "and record them as skipped")
    p.add_argument("--check-max-len", type=int, default=dflt["check_max_len"],
                   help="numerics check against single-device SDPA up to this total L")
    p.add_argument("--check-fp32-max-len", type=int, default=32768,
                   help="on GPU the reference runs in float32 up to this L, above it in the "
                        "benchmark dtype (cuDNN/flash); on CPU always float64")
    p.add_argument("--max-plan-pairs", type=int, default=256,
                   help="skip causal ring/allgather variants whose plan would pair more (q run, "
                        "kv run) segments than this per step (one kernel launch each)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one more iteration per variant (rank 0's "
                        "kernel time by category, exposed communication, idle time) into "
                        "the JSON and a table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_attention.json", help="JSON results")
    p.add_argument("--plot", default=None, help="PNG plot (default: --out with .png)")
    p.add_argument("--nproc", type=int, default=None,
                   help="ranks to spawn without torchrun (default: GPUs visible, else 2)")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="process-group timeout in seconds (a hang fails within this)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with device-dependent defaults and check names up front."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = build_parser(device)
    args = parser.parse_args(argv)
    args.device_kind = device
    args.argv = list(argv)
    if args.pairs is not None:
        try:
            args.pairs = [tuple(x.split("/", 1)) for x in args.pairs]
            args.strategies = list(dict.fromkeys(s for s, _ in args.pairs))
            args.layouts = list(dict.fromkeys(lay for _, lay in args.pairs))
        except ValueError:
            parser.error(f"--pairs wants strategy/layout items, got {args.pairs}")
    bad = [s for s in args.strategies if s not in seqpar.STRATEGIES]
    if bad:
        parser.error(f"unknown strategies {bad}; choose from {seqpar.STRATEGIES}")
    for name in args.layouts:
        try:
            parse_layout(name)
        except ValueError as exc:
            parser.error(str(exc))
    for name in args.peer_backends + args.ceiling_backends:
        if name not in SDPA_BACKENDS:
            parser.error(f"unknown SDPA backend {name!r}; choose from {SDPA_BACKENDS}")
    for name in args.rotate_methods:
        if name not in ROTATE_METHODS:
            parser.error(f"unknown rotate method {name!r}; choose from {ROTATE_METHODS}")
    if any(h <= 0 or args.heads % h for h in args.kv_heads):
        parser.error(f"--heads {args.heads} must be a multiple of every --kv-heads "
                     f"{args.kv_heads}")
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.plot is None:
        args.plot = os.path.splitext(args.out)[0] + ".png"
    return args


# ---------------------------------------------------------------- problems and variants

@dataclass(frozen=True)
class Problem:
    """One point of the grid: every variant of a problem sees the same global q/k/v/dout."""

    batch: int
    hq: int
    hkv: int
    d: int
    length: int
    causal: bool
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return (f"L={human_length(self.length)} hkv={self.hkv} "
                f"{'causal' if self.causal else 'full'}")


@dataclass(frozen=True)
class Variant:
    """What runs a problem: a seqpar strategy+layout, the torch peer, or the SDPA ceiling."""

    kind: str  # "seqpar" | "peer" | "ceiling"
    name: str
    strategy: str | None = None
    layout: str | None = None
    backend: str | None = None
    rotate: str | None = None
    ulysses: int | None = None  # hybrid: U of the U x R mesh


def hybrid_shape(world: int, ulysses: int | None = None) -> tuple[int, int]:
    """(U, R) of the hybrid mesh: ``ulysses`` if given, else the smallest divisor of P that is
    at least sqrt(P) (P=4 -> 2x2, P=8 -> 4x2, P=2 -> 2x1), keeping the all-to-all the larger
    (intra-node) dim."""
    if ulysses is None:
        ulysses = next(u for u in range(1, world + 1) if world % u == 0 and u * u >= world)
    if ulysses < 1 or world % ulysses:
        raise ValueError(f"--hybrid-ulysses {ulysses} does not divide the world size {world}")
    return ulysses, world // ulysses


def hybrid_sizes(world: int, ulysses: list[int] | None) -> list[int]:
    """The U values of the hybrid meshes to run (``--hybrid-ulysses``, else the default)."""
    return list(ulysses) if ulysses else [hybrid_shape(world)[0]]


def variants_for(args: argparse.Namespace, world: int = 1) -> list[Variant]:
    """Variants in priority order (what a time budget keeps first): the fastest ceiling,
    our strategies, the peer on the first backend, then the other backends."""
    first_ceiling, other_ceilings, ours, first_peer, other_peers = [], [], [], [], []
    if not args.no_ceiling:
        for i, backend in enumerate(args.ceiling_backends):
            (first_ceiling if i == 0 else other_ceilings).append(
                Variant("ceiling", f"sdpa-1dev/{backend}", backend=backend))
    pairs = getattr(args, "pairs", None) or [(s, lay) for s in args.strategies
                                             for lay in args.layouts]
    for strategy, layout in pairs:
        if strategy != "hybrid":
            ours.append(Variant("seqpar", f"{strategy}/{layout}", strategy=strategy,
                                layout=layout))
            continue
        for u in hybrid_sizes(world, args.hybrid_ulysses):
            label = "hybrid"
            with contextlib.suppress(ValueError):
                label = "hybrid-u{}r{}".format(*hybrid_shape(world, u))
            ours.append(Variant("seqpar", f"{label}/{layout}", strategy=strategy,
                                layout=layout, ulysses=u))
    if not args.no_peer:
        for i, backend in enumerate(args.peer_backends):
            for rotate in args.rotate_methods:
                (first_peer if i == 0 else other_peers).append(
                    Variant("peer", f"torch-cp/{backend}/{rotate}", backend=backend,
                            rotate=rotate))
    return first_ceiling + ours + first_peer + other_ceilings + other_peers


def _merged_runs(segments: list[tuple[int, int]]) -> int:
    """Number of runs of consecutive positions after merging runs that continue each other."""
    runs, end = 0, None
    for start, n in segments:
        if start != end:
            runs += 1
        end = start + n
    return runs


def plan_pairs(layout: Layout, strategy: str, world: int, length: int, ulysses: int = 1) -> int:
    """Upper bound on (q run, kv run) pairs one rank's causal plan holds per step.

    Each pair is one or more kernel launches; striped with small blocks makes
    this quadratic in L/P, which is a Python loop of millions of tiny kernels.
    """
    if strategy not in ("ring", "allgather", "hybrid"):
        return 1
    try:
        if strategy == "hybrid":  # ring member r holds slices r*U .. r*U+U-1
            runs = [_merged_runs([s for u in range(ulysses)
                                  for s in layout.segments(r * ulysses + u, world, length)])
                    for r in range(world // ulysses)]
            return max(runs) ** 2
        runs = [_merged_runs(layout.segments(r, world, length)) for r in range(world)]
        if strategy == "ring":
            return max(runs) ** 2
        every = [s for r in range(world) for s in layout.segments(r, world, length)]
        return max(runs) * _merged_runs(every)
    except ValueError:
        return 0  # seqpar.attention reports the bad length itself


@dataclass
class Reference:
    """Single-device output of a problem: the tensor on rank 0 only, ``available`` everywhere."""

    tensor: torch.Tensor | None
    note: str
    available: bool


@dataclass
class Runner:
    """Built inputs and the callables one variant is timed with."""

    probe: Callable[[], torch.Tensor]
    step: Callable[[], torch.Tensor]
    positions: torch.Tensor | None  # global positions of this rank's output rows
    info: dict = field(default_factory=dict)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def _classify(exc: BaseException) -> tuple[str, str]:
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:600]
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(exc, ValueError):
        return "invalid", text
    if (oom and isinstance(exc, oom)) or "out of memory" in str(exc).lower():
        return "oom", text
    if isinstance(exc, NotImplementedError):
        return "unsupported", text
    return "error", text


# ---------------------------------------------------------------- the benchmark

class AttentionBench:
    """Runs the grid on this rank; every rank executes the same sequence of collectives."""

    def __init__(self, args: argparse.Namespace, d: Dist):
        self.args, self.d = args, d
        self.dtype = DTYPES[args.dtype]
        self.t0 = time.monotonic()
        self.deadline = self.t0 + 60 * args.max_minutes if args.max_minutes else None
        self.records: list[dict] = []
        self.rates: dict[tuple, float] = {}  # (variant name, causal) -> last TFLOP/s per GPU
        self.mesh = None  # 1-D DeviceMesh for the peer
        # 2-D ("ulysses", "ring") DeviceMeshes for strategy "hybrid", by U; why one is missing
        self.hybrid_meshes: dict[int, object] = {}
        self.hybrid_errors: dict[int, str] = {}
        self.meta = self._meta()

    # ------------------------------------------------------------ metadata and output

    def _meta(self) -> dict:
        args, d = self.args, self.d
        gpu = torch.cuda.get_device_name(d.device) if d.cuda else None
        nccl = None
        if d.cuda:
            with contextlib.suppress(Exception):
                nccl = ".".join(map(str, torch.cuda.nccl.version()))
        command = os.environ.get("SEQPAR_BENCH_COMMAND") or (
            "seqpar bench attention " + shlex.join(args.argv))
        config = {k: v for k, v in vars(args).items() if k not in ("argv",)}
        return {
            "tool": "seqpar bench attention", "seqpar": seqpar.__version__,
            "git_commit": _git_commit(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "nccl": nccl, "device": d.device.type,
            "gpu": gpu, "gpus_visible": torch.cuda.device_count() if d.cuda else 0,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command, "argv": sys.argv,
            "launcher": "torchrun" if os.environ.get("TORCHELASTIC_RUN_ID") else "spawn",
            "world_size": d.world, "backend": d.backend, "dtype": str(self.dtype),
            "flops_rule": FLOPS_RULE, "ceiling_rule": CEILING_RULE, "timing_rule": TIMING_RULE,
            "env": {k: os.environ.get(k) for k in ENV_RECORDED},
            "config": config,
        }

    def _say(self, text: str) -> None:
        if self.d.rank == 0:
            print(text, flush=True)

    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _save(self) -> None:
        if self.d.rank == 0:
            self.meta["elapsed_s"] = round(self._elapsed(), 1)
            write_json(self.args.out, self.meta, self.records)

    # ------------------------------------------------------------ inputs

    def _seed(self, p: Problem) -> int:
        return (self.args.seed * 1_000_003 + p.length * 31 + p.hkv) % (2**62)

    def _inputs(self, p: Problem, positions: torch.Tensor | None, count: int = 4,
                length: int | None = None, seed: int | None = None) -> list[torch.Tensor]:
        """q, k, v, dout of the global problem (same values on every rank and for every
        variant: one seeded generator), cut to ``positions`` along the sequence.

        Full tensors are generated one at a time and freed before timing, so they
        never count towards a variant's peak memory.
        """
        length = p.length if length is None else length
        g = torch.Generator(device=self.d.device)
        g.manual_seed(self._seed(p) if seed is None else seed)
        out = []
        for heads in (p.hq, p.hkv, p.hkv, p.hq)[:count]:
            full = torch.randn((p.batch, heads, length, p.d), generator=g,
                               device=self.d.device, dtype=self.dtype)
            out.append(full if positions is None else full.index_select(2, positions))
            del full
        return out

    # ------------------------------------------------------------ runners

    def _seqpar_runner(self, p: Problem, v: Variant) -> Runner:
        layout = parse_layout(v.layout)
        group = self.d.group
        if v.strategy == "hybrid":
            if v.ulysses not in self.hybrid_meshes:
                raise ValueError(self.hybrid_errors.get(v.ulysses, "hybrid mesh not created"))
            group = self.hybrid_meshes[v.ulysses]
        # which global tokens this rank holds (for a hybrid mesh: slice r*U+u)
        positions = seqpar.position_ids(p.length, group=group, layout=layout,
                                        device=self.d.device)
        q, k, v_, dout = self._inputs(p, positions)
        q, k, v_ = (t.requires_grad_() for t in (q, k, v_))

        def run(check: bool) -> torch.Tensor:
            out = seqpar.attention(q, k, v_, strategy=v.strategy, group=group,
                                   causal=p.causal, layout=layout, check=check)
            torch.autograd.grad(out, (q, k, v_), dout)
            return out.detach()

        return Runner(probe=lambda: run(True), step=lambda: run(False), positions=positions)

    def _peer_runner(self, p: Problem, v: Variant) -> Runner:
        why = context_parallel_available()
        if why:
            raise NotImplementedError(why)
        if self.mesh is None:
            raise RuntimeError("device mesh for context_parallel was not created")
        stack = contextlib.ExitStack()
        try:
            positions = stack.enter_context(
                torch_context_parallel(self.mesh, p.length, v.rotate, self.d.device))
            stack.enter_context(sdpa_backend(v.backend))
            q, k, v_, dout = self._inputs(p, positions)
            step = SdpaStep(*(t.requires_grad_() for t in (q, k, v_)), dout, p.causal)
        except BaseException:
            stack.close()
            raise
        runner = Runner(probe=step.probe, step=step, positions=positions, stack=stack)
        runner.info["step"] = step
        return runner

    def _ceiling_runner(self, p: Problem, v: Variant) -> Runner:
        length = equal_flops_length(p.length, self.d.world)
        stack = contextlib.ExitStack()
        stack.enter_context(sdpa_backend(v.backend))
        try:
            q, k, v_, dout = self._inputs(p, None, length=length,
                                          seed=self._seed(p) + 17 + self.d.rank)
            step = SdpaStep(*(t.requires_grad_() for t in (q, k, v_)), dout, p.causal)
        except BaseException:
            stack.close()
            raise
        runner = Runner(probe=step.probe, step=step, positions=None, stack=stack)
        runner.info.update(step=step, L1=length)
        return runner

    def _runner(self, p: Problem, v: Variant) -> Runner:
        return {"seqpar": self._seqpar_runner, "peer": self._peer_runner,
                "ceiling": self._ceiling_runner}[v.kind](p, v)

    # ------------------------------------------------------------ skipping

    def _static_skip(self, p: Problem, v: Variant) -> tuple[str, str] | None:
        """(status, reason) known without running, the same on every rank."""
        d, args = self.d, self.args
        if v.kind == "peer" and not d.cuda and not args.peer_on_cpu:
            return ("unsupported", "torch context_parallel handles only the CUDA SDPA ops "
                    "(flash/efficient/cuDNN); on CPU SDPA is "
                    "aten._scaled_dot_product_flash_attention_for_cpu, which has no CP rule "
                    "(torch 2.13: causal raises NotImplementedError, full spends ~1 min in "
                    "DTensor sharding propagation, then the backward raises); --peer-on-cpu "
                    "tries anyway")
        if v.kind == "seqpar" and p.causal and d.world > 1:
            ulysses = v.ulysses if v.strategy == "hybrid" and v.ulysses else 1
            pairs = plan_pairs(parse_layout(v.layout), v.strategy, d.world, p.length, ulysses)
            if pairs > args.max_plan_pairs:
                return ("skipped", f"causal {v.strategy} plan with layout {v.layout!r} pairs up "
                        f"to {pairs} (q run, kv run) segments per step (> --max-plan-pairs "
                        f"{args.max_plan_pairs}); each is a kernel launch from a Python loop")
        if v.kind == "seqpar" and v.strategy == "rsa" and d.cuda:
            ls = p.length // d.world
            est = 6 * d.world * p.batch * p.hq * ls * ls * 4
            total = torch.cuda.get_device_properties(d.device).total_memory
            if est > 0.9 * total:
                return ("skipped", f"rsa keeps fp32 L/P x L scores and probabilities: "
                        f"~{est / 2**30:.0f} GiB estimated > {total / 2**30:.0f} GiB per device")
        return None

    def _predict_seconds(self, p: Problem, v: Variant) -> float:
        """Expected wall time of a variant from the rate it reached at a shorter length
        (0 when unknown: it runs, and the budget is checked again before the next one)."""
        rate = self.rates.get((v.name, p.causal))
        if not rate:
            return 0.0
        per_dev = attention_flops(p.batch, p.hq, p.length, p.d, p.causal) / self.d.world
        iter_s = per_dev / (rate * 1e12)
        warm = self.args.warmup if iter_s < 1.0 else 0
        body = (warm + self.args.iters) * iter_s
        if self.args.max_variant_seconds:
            body = min(body, max(self.args.max_variant_seconds, iter_s))
        return 1.5 * iter_s + body  # probe (plans, first-touch) + warm-up + timed

    def _budget_reason(self, predicted: float) -> str | None:
        if self.deadline is None:
            return None
        now = time.monotonic()
        if now >= self.deadline:
            return f"time budget --max-minutes {self.args.max_minutes:g} used up"
        if now + predicted > self.deadline:
            return (f"time budget: predicted {predicted:.0f} s from its rate at a shorter "
                    f"length, {self.deadline - now:.0f} s left of --max-minutes "
                    f"{self.args.max_minutes:g}")
        return None

    # ------------------------------------------------------------ guarded execution

    def _guarded(self, fn: Callable[[], object]) -> tuple[object, str, str]:
        """Run ``fn`` here, then agree with every rank on the outcome (also a barrier)."""
        result, status, reason = None, "ok", ""
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - recorded per variant, the run goes on
            status, reason = _classify(exc)
            result = None
        status, reason = agree_outcome(self.d, status, reason)
        if status != "ok":
            result = None
            self._free()
        return result, status, reason

    def _free(self) -> None:
        """Return memory between variants; on CPU there is nothing worth a gc pass (~0.3 s)."""
        if self.d.cuda:
            gc.collect()  # tracebacks of a caught OOM hold frames that hold tensors
            torch.cuda.empty_cache()

    def _iterations(self, spent_s: float, iter_s: float, warm_left: int) -> tuple[int, int]:
        """(more warm-up, timed) iterations that fit --max-variant-seconds, given the seconds
        already spent on this variant and the best estimate of one iteration."""
        iters = self.args.iters
        cap = self.args.max_variant_seconds
        if cap and iter_s > 0:
            affordable = int(max(0.0, cap - spent_s) // iter_s)
            if affordable < warm_left + iters:
                iters = max(1, min(iters, affordable))
                warm_left = max(0, min(warm_left, affordable - iters))
        return warm_left, iters

    def _time_once(self, fn: Callable[[], object]) -> float:
        if self.d.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    # ------------------------------------------------------------ numerics

    def _reference(self, p: Problem) -> Reference:
        """Single-device SDPA on the full problem, on rank 0 (its output kept on the host so
        it never counts towards a variant's peak memory); every rank learns whether it
        exists, because the check's gather is a collective."""
        if p.length > self.args.check_max_len:
            return Reference(None, f"not checked: L={p.length} > --check-max-len "
                                   f"{self.args.check_max_len}", False)
        ref, note = None, "reference computed on rank 0"
        if self.d.rank == 0:
            try:
                ref, note = self._reference_on_rank0(p)
            except Exception as exc:  # noqa: BLE001 - the check is skipped, timings go on
                ref, note = None, "reference failed: " + _classify(exc)[1]
            self._free()
        available = from_rank0(self.d, ref is not None)  # also waits for rank 0
        return Reference(ref, note, available)

    def _reference_on_rank0(self, p: Problem) -> tuple[torch.Tensor, str]:
        import torch.nn.functional as F

        q, k, v = self._inputs(p, None, count=3)
        k, v = expand_kv(k, p.hq), expand_kv(v, p.hq)
        with torch.no_grad():
            if not self.d.cuda:
                out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                     is_causal=p.causal)
                return out.cpu(), "sdpa float64 (math) on 1 process"
            if p.length <= self.args.check_fp32_max_len:
                try:
                    with sdpa_backend("efficient"):
                        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                             is_causal=p.causal)
                    return out.cpu(), "sdpa float32 (efficient) on 1 GPU"
                except RuntimeError:
                    pass
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=p.causal)
            return out.cpu(), f"sdpa {str(self.dtype).replace('torch.', '')} (cudnn/flash) on 1 GPU"

    def _gather_global(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """The full ``(B, H, L, D)`` tensor on rank 0 from every rank's rows at ``positions``."""
        d = self.d
        # (B, H, Ls, D) -> (Ls, B, H, D): rank blocks contiguous for the all-gather
        x0 = x.movedim(2, 0).contiguous()
        buf = x0.new_empty((d.world * x0.shape[0], *x0.shape[1:]))
        all_gather_flat(buf, x0, group=d.group)
        pos = positions.to(device=x.device, dtype=torch.int64).contiguous()
        pos_all = pos.new_empty(d.world * pos.numel())
        all_gather_flat(pos_all, pos, group=d.group)
        if d.rank != 0:
            return None
        full = torch.empty_like(buf)
        full[pos_all] = buf  # rank order -> global order
        return full.movedim(0, 2)  # (L, B, H, D) -> (B, H, L, D)

    def _check(self, out: torch.Tensor, positions: torch.Tensor, ref: Reference) -> dict:
        """Relative L2 error of the gathered output against the reference (on rank 0)."""
        if not ref.available:
            return {"skipped": ref.note}
        full = self._gather_global(out, positions)
        if full is None or ref.tensor is None:
            return {}
        tensor, note = ref.tensor, ref.note
        tol = TOLERANCE[self.dtype]
        num = den = 0.0
        for h in range(full.shape[1]):  # head by head: bounded extra memory
            a = full[:, h].float()
            b = tensor[:, h].to(device=a.device, dtype=torch.float32)
            num += float((a - b).pow(2).sum(dtype=torch.float64))
            den += float(b.pow(2).sum(dtype=torch.float64))
        del full
        err = math.sqrt(num / max(den, 1e-300))
        return {"rel_err": err, "tol": tol, "ok": err < tol, "reference": note}

    # ------------------------------------------------------------ one variant

    def _record(self, p: Problem, v: Variant) -> dict:
        return {"kind": v.kind, "name": v.name, "strategy": v.strategy, "layout": v.layout,
                "backend": v.backend, "rotate_method": v.rotate, "L": p.length,
                "batch": p.batch, "hq": p.hq, "hkv": p.hkv, "d": p.d,
                "dtype": str(p.dtype).replace("torch.", ""), "causal": p.causal,
                "world_size": self.d.world, "status": None, "reason": ""}

    def _run_variant(self, p: Problem, v: Variant, ref) -> dict:
        rec = self._record(p, v)
        skip = self._static_skip(p, v)
        if skip is None:
            budget = self._budget_reason(self._predict_seconds(p, v))
            if from_rank0(self.d, budget is not None):  # rank 0's clock decides for all
                skip = ("skipped", budget or "time budget (decided by rank 0)")
        if skip is not None:
            rec.update(status=skip[0], reason=skip[1])
            return rec
        runner, status, why = self._guarded(lambda: self._runner(p, v))
        if status != "ok":
            rec.update(status=status, reason=why)
            return rec
        try:
            status, why = self._measure(p, v, runner, ref, rec)
        finally:
            runner.stack.close()
            del runner
            self._free()
        rec["status"], rec["reason"] = status, why
        if status == "ok":
            self.rates[(v.name, p.causal)] = rec["tflops_per_gpu"]
        return rec

    def _measure(self, p: Problem, v: Variant, runner: Runner, ref, rec: dict) -> tuple[str, str]:
        d = self.d
        box: dict = {}

        def probe() -> torch.Tensor:
            t = time.perf_counter()
            with count_bytes() as counter:
                out = runner.probe()
            if d.cuda:
                torch.cuda.synchronize()
            box.update(seconds=time.perf_counter() - t, counter=counter)
            return out

        out, status, why = self._guarded(probe)
        if status != "ok":
            return status, why
        counter = box["counter"]
        probe_s, sent = all_max(d, [box["seconds"], float(counter.bytes_sent)])
        rec["probe_ms"] = probe_s * 1e3
        if v.kind == "seqpar":  # torch's own collectives do not report to seqpar.comm
            rec["bytes_sent_per_rank"] = int(sent)
            rec["bytes_by_kind"] = dict(counter.bytes_by_kind)
            rec["comm_calls"] = dict(counter.calls)
        step = runner.info.get("step")
        if step is not None:
            rec["gqa"] = step.gqa
        if "L1" in runner.info:
            rec["L1"] = runner.info["L1"]
        if v.kind != "ceiling" and runner.positions is not None:
            check, status, why = self._guarded(
                functools.partial(self._check, out, runner.positions, ref))
            rec["check"] = check if status == "ok" else {"skipped": f"check failed: {why}"}
        out = None  # free the probe's output before peak memory is measured
        if d.cuda:
            torch.cuda.reset_peak_memory_stats(d.device)
        # Warm-up: the probe already paid the one-time costs; an iteration of >= 1 s needs
        # no more. The first warm-up also re-estimates one iteration (a cold probe can be
        # far slower), which decides how many iterations fit --max-variant-seconds.
        warm_left = self.args.warmup if probe_s < 1.0 else 0
        spent, iter_s, warm_done = 0.0, probe_s, 0  # the cap excludes the probe
        if warm_left:
            ms, status, why = self._guarded(lambda: self._time_once(runner.step))
            if status != "ok":
                return status, why
            first = all_max(d, [ms])[0] / 1e3
            spent, iter_s, warm_left, warm_done = first, min(probe_s, first), warm_left - 1, 1
        warm_left, iters = self._iterations(spent, iter_s, warm_left)
        rec["warmup"], rec["iters"] = warm_done + warm_left, iters
        times = []
        for i in range(warm_left + iters):
            ms, status, why = self._guarded(lambda: self._time_once(runner.step))
            if status != "ok":
                return status, why
            if i >= warm_left:
                times.append(ms)
        peak = torch.cuda.max_memory_allocated(d.device) / 2**30 if d.cuda else None
        per_iter = [max(col) for col in zip(*gather_rows(d, times))]
        rec["times_ms"] = per_iter
        rec["time_ms"] = statistics.median(per_iter)
        if peak is not None:
            rec["peak_gib"] = all_max(d, [peak])[0]
        if self.args.profile:
            prof, status, why = self._guarded(lambda: profile_step(runner.step, d.cuda))
            if status == "ok":
                spans = gather_rows(d, [prof["span_ms"], prof.get("idle_ms", 0.0),
                                        prof.get("exposed_comm_ms", 0.0)])
                prof["ranks"] = [{"span_ms": a, "idle_ms": b, "exposed_comm_ms": c}
                                 for a, b, c in spans]
                rec["profile"] = prof
            else:
                rec["profile"] = {"skipped": f"profile failed: {why}"}
        if v.kind == "ceiling":
            flops, devices = attention_flops(p.batch, p.hq, rec["L1"], p.d, p.causal), 1
        else:
            flops, devices = attention_flops(p.batch, p.hq, p.length, p.d, p.causal), d.world
        rec["flops_total"] = flops
        rec["tflops_per_gpu"] = flops / devices / (rec["time_ms"] * 1e-3) / 1e12
        return "ok", ""

    # ------------------------------------------------------------ the grid

    def run(self) -> int:
        args, d = self.args, self.d
        if not args.no_peer and context_parallel_available() is None and (
                d.cuda or args.peer_on_cpu):
            try:
                self.mesh = make_mesh(d.device, d.world)
            except Exception as exc:  # noqa: BLE001 - the peer rows record why
                self._say(f"no device mesh for the peer: {exc}")
        if "hybrid" in args.strategies:
            for u in hybrid_sizes(d.world, args.hybrid_ulysses):
                try:
                    self.hybrid_meshes[u] = hybrid_mesh(u, d.world // u, d.device.type)
                except Exception as exc:  # noqa: BLE001 - the hybrid rows record why
                    self.hybrid_errors[u] = f"no ('ulysses', 'ring') mesh: {_classify(exc)[1]}"
        self._say(
            f"seqpar bench attention: P={d.world} ({d.backend}) on {self.meta['gpu'] or 'CPU'}, "
            f"torch {torch.__version__}; B={args.batch} Hq={args.heads} Hkv={args.kv_heads} "
            f"D={args.head_dim} {args.dtype}; L={[human_length(n) for n in args.seq_lens]}; "
            f"budget {args.max_minutes or 'none'} min\n  FLOPs: {FLOPS_RULE}\n"
            f"  ceiling: {CEILING_RULE}")
        variants = variants_for(args, d.world)
        for length in args.seq_lens:
            for hkv in args.kv_heads:
                for causal in args.masks:
                    p = Problem(args.batch, args.heads, hkv, args.head_dim, length, causal,
                                self.dtype)
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
        if runs_any and from_rank0(self.d, self._budget_reason(0.0) is None):
            ref = self._reference(p)
        for v in variants:
            rec = self._run_variant(p, v, ref)
            self.records.append(rec)
            self._progress(p, rec)
            self._save()
        ref = None
        self._free()

    def _progress(self, p: Problem, rec: dict) -> None:
        head = f"[{self._elapsed():6.0f}s] {p.label:<22} {rec['name']:<28}"
        if rec["status"] != "ok":
            reason = " ".join(str(rec["reason"]).split())
            self._say(f"{head} {rec['status']}: {reason[:150]}")
            return
        peak = f" peak {rec['peak_gib']:.2f} GiB" if rec.get("peak_gib") is not None else ""
        check = rec.get("check") or {}
        err = (f" err {check['rel_err']:.1e}{'' if check['ok'] else ' FAIL'}"
               if "rel_err" in check else "")
        self._say(f"{head} {rec['time_ms']:9.2f} ms {rec['tflops_per_gpu']:8.3g} TFLOP/s/dev"
                  f"{peak}{err}")


def _git_commit() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(seqpar.__file__)))
        res = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return res.stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git is fine
        return None


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
