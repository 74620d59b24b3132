"""``seqpar demo``: every strategy on one random problem, checked against dense.

Spawns 4 local CPU processes (gloo) by default, or joins torchrun's group on a
GPU host (NCCL). Prints, per strategy and mask: the max relative error of the
output and gradients vs float64 dense attention, bytes each rank sent, peak
memory per rank and fwd+bwd time; then the causal work per rank under the
contiguous and zigzag layouts. Exits non-zero if any error is out of tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

from . import STRATEGIES, attention, comm, hybrid_mesh, shard, work_per_rank
from .kernels.reference import dense_attention_grads
from .launch import run
from .utils.memory import PeakMemory
from .utils.numerics import TOLERANCE, rel_err


def _reference(full, causal, device):
    """Dense float64 attention and gradients, computed on rank 0 and broadcast."""
    q, k, v, dout = full
    outs = [torch.empty_like(t) for t in (q, q, k, v)]
    if dist.get_rank() == 0:
        outs = [t.contiguous() for t in dense_attention_grads(q, k, v, dout, causal=causal)]
    for t in outs:
        dist.broadcast(t, src=0)
    return outs


def _hybrid_mesh(device: torch.device, world: int):
    """A (ulysses=2, ring=P/2) mesh for the hybrid row, or None for odd P."""
    if world < 2 or world % 2:
        return None
    return hybrid_mesh(2, world // 2, device.type)


def _one(args, device, full, ref, strategy, causal, group=None):
    dtype = getattr(torch, args.dtype)
    q, k, v = (shard(t, dim=2, group=group, layout=args.layout).to(dtype).requires_grad_()
               for t in full[:3])
    dout = shard(full[3], dim=2, group=group, layout=args.layout).to(dtype)

    def step():
        for t in (q, k, v):
            t.grad = None
        out = attention(q, k, v, strategy=strategy, group=group, causal=causal,
                        layout=args.layout)
        out.backward(dout)
        return out

    step()  # warm-up: kernels chosen, buffers allocated
    with comm.count_bytes() as sent, PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    got = [out.detach(), q.grad, k.grad, v.grad]
    err = max(rel_err(g, shard(r, dim=2, group=group, layout=args.layout))
              for g, r in zip(got, ref))
    row = torch.tensor([err, sent.bytes_sent, mem.used, elapsed], dtype=torch.float64,
                       device=device)
    dist.all_reduce(row, op=dist.ReduceOp.MAX)
    return row.tolist()


def _work_table(world: int, length: int) -> str:
    lines = [f"causal attention work per rank (query-key pairs, L={length}, P={world}):"]
    for layout in ("contiguous", "zigzag"):
        work = work_per_rank(strategy="ring", world=world, length=length, causal=True,
                             layout=layout)
        spread = max(work) / max(1, min(work))
        lines.append(f"  {layout:<10} " + " ".join(f"{w:>10,}" for w in work) +
                     f"   max/min {spread:.2f}")
    return "\n".join(lines)


def _demo(device: torch.device, args) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(args.seed)
    shapes = [(args.batch, args.heads, args.seq_len, args.head_dim),
              (args.batch, args.kv_heads, args.seq_len, args.head_dim),
              (args.batch, args.kv_heads, args.seq_len, args.head_dim),
              (args.batch, args.heads, args.seq_len, args.head_dim)]
    # round through the demo dtype so the reference sees the same inputs
    full = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).double().to(device)
            for s in shapes]
    strategies = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    mesh = _hybrid_mesh(device, world) if "hybrid" in strategies else None
    rows = []
    for causal in (False, True):
        ref = _reference(full, causal, device)
        for strategy in strategies:
            if strategy == "ulysses" and args.heads % world:
                if rank == 0:
                    print(f"skipping ulysses: {args.heads} heads not divisible by {world} "
                          "ranks", file=sys.stderr)
                continue
            if strategy == "hybrid" and mesh is None:
                if rank == 0:
                    print(f"skipping hybrid: needs an even number of ranks, got {world}",
                          file=sys.stderr)
                continue
            group = mesh if strategy == "hybrid" else None
            rows.append((strategy, causal,
                         *_one(args, device, full, ref, strategy, causal, group)))
    if rank != 0:
        return
    tol = TOLERANCE[dtype]
    print(f"\nseqpar demo: {world} ranks ({dist.get_backend()}, {device.type}), "
          f"B={args.batch} Hq={args.heads} Hkv={args.kv_heads} L={args.seq_len} "
          f"D={args.head_dim} {args.dtype}, layout={args.layout}")
    print(f"{'strategy':<10} {'mask':<7} {'max rel err':>11} {'ok':>3} {'sent/rank MiB':>14} "
          f"{'peak/rank MiB':>14} {'fwd+bwd ms':>11}")
    bad = 0
    for strategy, causal, err, sent, peak, secs in rows:
        ok = err <= tol
        bad += not ok
        name = "hybrid2xR" if strategy == "hybrid" else strategy
        print(f"{name:<10} {'causal' if causal else 'full':<7} {err:>11.2e} "
              f"{'yes' if ok else 'NO':>3} {sent / 2**20:>14.2f} {peak / 2**20:>14.1f} "
              f"{secs * 1e3:>11.1f}")
    print(f"(errors: output and dq/dk/dv vs float64 dense, relative; tolerance {tol:g}; "
          f"peak = {'CUDA allocator peak' if device.type == 'cuda' else 'RSS growth'})\n")
    print(_work_table(world, args.seq_len))
    if bad:
        raise SystemExit(f"{bad} strategies out of tolerance")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="seqpar demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available() and "RANK" in os.environ
    p.add_argument("--nproc", type=int, default=4, help="local processes (without torchrun)")
    p.add_argument("--seq-len", type=int, default=16384 if gpu else 2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32 if gpu else 8)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=128 if gpu else 64)
    p.add_argument("--dtype", default="bfloat16" if gpu else "float32",
                   choices=["float64", "float32", "bfloat16"])
    p.add_argument("--layout", default="contiguous")
    p.add_argument("--strategies", default="", help="comma-separated; default all")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.kv_heads = args.kv_heads or args.heads
    if args.nproc < 1:
        p.error(f"--nproc must be >= 1, got {args.nproc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    return run(_demo, args.nproc, args, prog="seqpar demo")
