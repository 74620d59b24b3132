"""Command line of ``seqpar bench attention``: the problem grid, measurement and output.

Each runner adds its own options (``Runner.add_arguments``) and checks them
(``Runner.check_arguments``); what is here is shared by all of them. Defaults
depend on the device: on GPU issue 5's grid, on CPU a seconds-long smoke run for CI.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch

from ..layout import Layout, Striped, get_layout
from ..utils.numerics import DTYPES

#: defaults that differ by device
DEFAULTS = {
    "cuda": dict(seq_lens="32K,128K,512K,1M", heads=32, kv_heads="32,8", head_dim=128,
                 dtype="bf16", warmup=2, iters=5, check_max_len=524288),
    "cpu": dict(seq_lens="256", heads=4, kv_heads="4,2", head_dim=16, dtype="fp32", warmup=1,
                iters=3, check_max_len=8192),
}


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


def int_list(text: str) -> list[int]:
    """``"4,2"`` -> ``[4, 2]``."""
    return [int(x) for x in text.split(",") if x.strip()]


def names(text: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_layout(name: str) -> Layout:
    """A layout by name; ``striped:B`` is striped in blocks of B tokens."""
    if name.startswith("striped:"):
        return Striped(block=int(name.split(":", 1)[1]))
    return get_layout(name)


def build_parser(device: str, runners: Sequence[type]) -> argparse.ArgumentParser:
    """Options; defaults depend on ``device`` ("cuda" or "cpu"); ``runners`` add theirs."""
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
    p.add_argument("--kv-heads", type=int_list, default=dflt["kv_heads"],
                   help="kv head counts Hkv to run (GQA when < Hq)")
    p.add_argument("--head-dim", type=int, default=dflt["head_dim"])
    p.add_argument("--dtype", choices=sorted(DTYPES), default=dflt["dtype"])
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--causal", dest="masks", action="store_const", const=[True],
                      help="causal only")
    mask.add_argument("--full", dest="masks", action="store_const", const=[False],
                      help="full (non-causal) only")
    mask.add_argument("--both", dest="masks", action="store_const", const=[True, False],
                      help="causal and full (default)")
    p.set_defaults(masks=[True, False])
    p.add_argument("--no-peer", action="store_true",
                   help="skip the peers (torch context_parallel)")
    for runner in runners:
        runner.add_arguments(p, device)
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


def parse_args(argv: list[str], runners: Sequence[type]) -> argparse.Namespace:
    """Parse ``argv`` with device-dependent defaults and check names up front."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = build_parser(device, runners)
    args = parser.parse_args(argv)
    args.device_kind = device
    args.argv = list(argv)
    for runner in runners:
        runner.check_arguments(args, parser.error)
    if any(h <= 0 or args.heads % h for h in args.kv_heads):
        parser.error(f"--heads {args.heads} must be a multiple of every --kv-heads "
                     f"{args.kv_heads}")
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.plot is None:
        args.plot = os.path.splitext(args.out)[0] + ".png"
    return args
