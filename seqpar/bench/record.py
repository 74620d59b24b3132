"""What a run writes besides timings: its metadata, one record per variant, progress lines.

The metadata says what produced the numbers (versions, devices, the exact
command, NCCL environment, the rules behind FLOPs and the ceiling, which block
kernels seqpar chose per problem), so a JSON file can be judged on its own later.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone

import torch

import seqpar

from ..kernels import SELECTOR, sdp_flags
from ..utils.numerics import dtype_name
from .launch import Dist
from .problem import Problem, Variant
from .report import CEILING_RULE, FLOPS_RULE, TIMING_RULE

#: environment that changes NCCL behaviour on the H200 machines (see scripts/gpu_bench.sh)
ENV_RECORDED = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
                "CUDA_VISIBLE_DEVICES", "NCCL_ALGO", "NCCL_PROTO")


def git_commit() -> str | None:
    """HEAD of the seqpar checkout, if it is one."""
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(seqpar.__file__)))
        res = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return res.stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git is fine
        return None


def run_meta(args: argparse.Namespace, d: Dist, dtype: torch.dtype) -> dict:
    """The ``meta`` object of the JSON file."""
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
        "git_commit": git_commit(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "nccl": nccl, "device": d.device.type,
        "gpu": gpu, "gpus_visible": torch.cuda.device_count() if d.cuda else 0,
        "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "argv": sys.argv,
        "launcher": "torchrun" if os.environ.get("TORCHELASTIC_RUN_ID") else "spawn",
        "world_size": d.world, "backend": d.backend, "dtype": str(dtype),
        "flops_rule": FLOPS_RULE, "ceiling_rule": CEILING_RULE, "timing_rule": TIMING_RULE,
        "env": {k: os.environ.get(k) for k in ENV_RECORDED},
        "config": config,
        # per problem: the block kernels seqpar's selector chose (kernels.SELECTOR.report())
        "kernels": [],
    }


def kernel_header() -> str:
    """One line on how seqpar picks its block kernels, for the run's header."""
    cudnn, flash = sdp_flags()
    return (f"  seqpar block kernels: chosen per shape class by seqpar.kernels.SELECTOR "
            f"(SDPA flags: cudnn={'on' if cudnn else 'off'}, flash={'on' if flash else 'off'})")


def kernel_choice(p: Problem) -> dict:
    """The selector's choices for this problem's dtype, head dim and GQA group (it is
    reset before each problem, so these are what the problem's seqpar variants used)."""
    mine = [row for row in SELECTOR.report() if row["dtype"] == dtype_name(p.dtype)
            and row["head_dim"] == p.d and row["gqa_group"] == p.hq // p.hkv]
    return {"L": p.length, "hkv": p.hkv, "causal": p.causal, "choices": mine}


def new_record(p: Problem, v: Variant, world: int) -> dict:
    """The record of one variant before it runs (status filled in later)."""
    return {"kind": v.kind, "name": v.name, "strategy": v.strategy, "layout": v.layout,
            "backend": v.backend, "rotate_method": v.rotate, "L": p.length,
            "batch": p.batch, "hq": p.hq, "hkv": p.hkv, "d": p.d,
            "dtype": dtype_name(p.dtype), "causal": p.causal,
            "world_size": world, "status": None, "reason": ""}


def progress_line(elapsed: float, p: Problem, rec: dict) -> str:
    """One line per finished variant: time, rate, peak memory, check error or why not."""
    head = f"[{elapsed:6.0f}s] {p.label:<22} {rec['name']:<28}"
    if rec["status"] != "ok":
        reason = " ".join(str(rec["reason"]).split())
        return f"{head} {rec['status']}: {reason[:150]}"
    peak = f" peak {rec['peak_gib']:.2f} GiB" if rec.get("peak_gib") is not None else ""
    check = rec.get("check") or {}
    err = (f" err {check['rel_err']:.1e}{'' if check['ok'] else ' FAIL'}"
           if "rel_err" in check else "")
    return (f"{head} {rec['time_ms']:9.2f} ms {rec['tflops_per_gpu']:8.3g} TFLOP/s/dev"
            f"{peak}{err}")
