"""Longest sequence bert-base trains with Linformer attention (issue 16, experiment 4).

Three modes:

* ``check`` (under torchrun, any world): a small fp32 Linformer model under sp=P
  against the same model in one process on this GPU (NCCL all-reduce path):
  logits and every gradient within 1e-4 relative (TF32 off).
* ``trial --length L`` (under torchrun, or one process): bert-base, Linformer k,
  vocabulary 30,522, batch 1, sp = world size (contiguous layout), full
  activation checkpointing, chunked loss, bf16 autocast, fused AdamW; two steps
  (the second with AdamW's state allocated). Writes one JSON line (ok, peak memory,
  step time) or ``{"ok": false, "oom": true}``.
* ``search --nproc P``: doubles L from ``--start`` until a trial fails (out of memory
  or timeout), then bisects until the bracket is within ``--resolution`` of the best
  length or ``--budget-s`` is spent. Each trial is a fresh process group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

UNIT = 16384  # lengths are multiples of this (every sp degree divides it)


def _setup():
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from seqpar.launch.group import init_from_env
        device = init_from_env()
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:  # a CPU dry run of the script's logic (tiny models only)
        device = torch.device("cpu")
    rank = dist.get_rank() if world > 1 else 0
    return torch, dist, world, rank, device


def _build(cfg, dims, mesh, device, *, meta: bool):
    """The model parallelized; built on the meta device so that only this rank's E/F
    columns are ever allocated on the GPU (values re-initialised after)."""
    import torch

    from seqpar.models import RotaryEmbedding, build_model
    from seqpar.parallel import parallelize

    if not meta:
        torch.manual_seed(0)
        with torch.device(device):
            model = build_model(cfg)
        return parallelize(model, dims, mesh, fsdp=False)
    with torch.device("meta"):
        model = build_model(cfg)
    par = parallelize(model, dims, mesh, fsdp=False, activation_checkpointing="full")
    model.to_empty(device=device)
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if cfg.tie_embeddings:  # to_empty gives each module its own tensor
        model.output.weight = model.tok_embeddings.weight
    model.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta).to(device)
    model.init_weights()
    return par


def check(args) -> int:
    torch, dist, world, rank, device = _setup()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import seqpar
    from seqpar.models import build_model, model_config
    from seqpar.parallel import ParallelDims, sync_gradients
    from seqpar.utils.numerics import rel_err

    length = 2048
    cfg = model_config("bert-tiny", attention="linformer", linformer_k=64, max_seq_len=length,
                       vocab_size=512)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 512, (2, length), generator=g).to(device)
    cot = torch.randn(2, length, 512, generator=g).to(device)
    torch.manual_seed(0)
    ref = build_model(cfg).to(device)
    ref_logits = ref(tokens, torch.arange(length, device=device))
    (ref_logits * cot).sum().backward()
    worst = {}
    for layout in ("contiguous", "zigzag", "striped"):
        dims = ParallelDims(sp=world, layout=layout)
        par = _build(cfg, dims, dims.build_mesh(device.type) if world > 1 else None, device,
                     meta=False)
        sg = par.group("sp")
        shard = lambda t: seqpar.shard(t, dim=1, group=sg, layout=layout)  # noqa: E731
        logits = par.model(shard(tokens), seqpar.position_ids(length, group=sg, layout=layout,
                                                              device=device))
        (logits * shard(cot)).sum().backward()
        sync_gradients(par)
        errs = {"logits": rel_err(logits, shard(ref_logits))}
        ref_grads = dict(ref.named_parameters())
        for name, grad in par.full_gradients().items():
            errs[name] = rel_err(grad, ref_grads[name].grad)
        worst[layout] = max(errs.items(), key=lambda kv: kv[1])
    ok = all(err <= 1e-4 for _, err in worst.values())
    if rank == 0:
        line = {"mode": "check", "world": world, "ok": ok, "worst": worst}
        print(json.dumps(line))
        if args.out:
            Path(args.out).write_text(json.dumps(line) + "\n")
    if world > 1:
        dist.destroy_process_group()
    return 0 if ok else 1


def trial(args) -> int:
    torch, dist, world, rank, device = _setup()
    import seqpar
    from seqpar.data import IGNORE_INDEX
    from seqpar.models import model_config
    from seqpar.parallel import ParallelDims, clip_grad_norm, sync_gradients
    from seqpar.train.step import chunked_head_loss

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = (lambda: torch.cuda.max_memory_allocated() / 2**30) if cuda else (lambda: 0.0)
    length = args.length
    result = {"mode": "trial", "world": world, "length": length, "k": args.k,
              "model": args.model}
    try:
        cfg = model_config(args.model, attention="linformer", linformer_k=args.k,
                           max_seq_len=length, vocab_size=args.vocab)
        dims = ParallelDims(sp=world, layout="contiguous")
        par = _build(cfg, dims, dims.build_mesh(device.type) if world > 1 else None, device,
                     meta=True)
        opt = torch.optim.AdamW(par.model.parameters(), lr=1e-4, fused=True)
        sg = par.group("sp")
        g = torch.Generator(device=device).manual_seed(rank)
        local = length // world
        tokens = torch.randint(0, args.vocab, (1, local), device=device, generator=g)
        labels = torch.where(torch.rand(1, local, device=device, generator=g) < 0.15, tokens,
                             torch.full_like(tokens, IGNORE_INDEX))
        pos = seqpar.position_ids(length, group=sg, layout="contiguous", device=device)
        times = []
        for _ in range(args.steps):
            sync()
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = par.model(tokens, pos, head_loss=chunked_head_loss(
                    labels, par.group("world"), args.loss_chunk))
            out.backward_loss.backward()
            sync_gradients(par)
            clip_grad_norm(par, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - t0)
        result.update(ok=True, loss=out.loss, step_s=times[-1], step_times=times,
                      tokens_per_s=length / times[-1],
                      peak_alloc_gib=peak(),
                      peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30 if cuda else 0,
                      ef_params_per_rank=sum(p.numel() for n, p in
                                             par.model.named_parameters() if ".linformer." in n))
    except torch.OutOfMemoryError as exc:
        result.update(ok=False, oom=True, error=str(exc).splitlines()[0][:300],
                      peak_alloc_gib=peak())
    if args.out:
        with open(f"{args.out}.rank{rank}", "w") as fh:
            fh.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    if not result["ok"]:
        os._exit(3)  # the other ranks may wait in a collective: end fast, torchrun stops them
    if world > 1:
        dist.destroy_process_group()
    return 0


def _run_trial(nproc: int, length: int, args, tmp: Path) -> dict:
    out = tmp / f"trial-{nproc}-{length}.json"
    cmd = [sys.executable, __file__, "trial", "--length", str(length), "--k", str(args.k),
           "--model", args.model, "--vocab", str(args.vocab), "--out", str(out)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc)] + cmd[1:]
    t0 = time.time()
    # own session: on timeout the whole group (torchrun and its workers) is killed, so no
    # orphaned rank keeps GPU memory for the next trial
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=args.trial_timeout)
        rc, tail = proc.returncode, text[-1500:]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        rc, tail = 124, "timeout"
    rows = [json.loads(p.read_text()) for p in sorted(tmp.glob(out.name + ".rank*"))]
    # every rank wrote a successful row (a slow exit after that does not matter)
    ok = len(rows) == nproc and all(r.get("ok") for r in rows)
    res = {"length": length, "ok": ok, "rc": rc, "wall_s": round(time.time() - t0, 1),
           "ranks": rows}
    if not ok and not any(r.get("oom") for r in rows):
        res["tail"] = tail
    print(f"  sp={nproc} L={length:,}: {'ok' if ok else 'FAIL'} rc={rc} "
          f"{[round(r.get('peak_alloc_gib', 0), 1) for r in rows]} GiB "
          f"{rows[0].get('step_s', 0) if rows else 0:.2f} s/step ({res['wall_s']} s)",
          flush=True)
    return res


def search(args) -> int:
    tmp = Path(args.out).parent / f"trials-sp{args.nproc}"
    tmp.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget_s
    trials = []

    def attempt(length: int) -> bool:
        trials.append(_run_trial(args.nproc, length, args, tmp))
        return trials[-1]["ok"]

    lo, hi = 0, None
    length = max(UNIT, args.start // UNIT * UNIT)
    while time.time() < deadline:  # doubling (halving while even the start fails)
        if attempt(length):
            lo = length
            if hi is not None:
                break
            length *= 2
        else:
            hi = length
            if lo:
                break
            length = length // 2 // UNIT * UNIT
            if length < UNIT:
                break
    while hi is not None and lo and hi - lo > max(UNIT, lo * args.resolution) \
            and time.time() < deadline:
        mid = (lo + hi) // 2 // UNIT * UNIT
        if mid in (lo, hi):
            break
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    best = next((t for t in trials if t["ok"] and t["length"] == lo), None)
    summary = {"nproc": args.nproc, "model": args.model, "k": args.k, "vocab": args.vocab,
               "max_length": lo, "first_failure": hi, "budget_exhausted": time.time() >= deadline,
               "best": best, "trials": trials}
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"sp={args.nproc}: max length {lo:,} tokens (first failure {hi})", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("check", "trial", "search"))
    p.add_argument("--length", type=int, default=0)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--model", default="bert-base")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--loss-chunk", type=int, default=8192)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--start", type=int, default=262144)
    p.add_argument("--resolution", type=float, default=1 / 16)
    p.add_argument("--budget-s", type=float, default=270)
    p.add_argument("--trial-timeout", type=float, default=150)
    p.add_argument("--out", default="")
    args = p.parse_args()
    return {"check": check, "trial": trial, "search": search}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
