"""The training loop: build, parallelize, train, checkpoint, report.

``train(cfg)`` runs in every process of an already initialised process group
(or in one process with no torch.distributed at all). Each step every rank
builds the same global batch, keeps its shard, runs forward/backward, and
the SP-exact loss makes the result independent of how the batch was split.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ..data import make_dataset, shard_batch
from ..models import build_model, model_config
from ..parallel import Parallelized, clip_grad_norm, parallelize, sync_gradients
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .config import TrainConfig
from .loss import sp_exact_loss


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


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine down to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(
        math.pi * progress)))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build(cfg: TrainConfig, device: torch.device) -> tuple[Parallelized, object, object]:
    """Dataset, model and its parallel handle, built identically on every rank."""
    _, world = _world()
    dims = cfg.parallel_dims()
    mcfg = model_config(cfg.model)
    dataset = make_dataset(cfg.data, cfg.seq_len, arch=mcfg.arch)
    mcfg = model_config(cfg.model, vocab_size=dataset.vocab_size)
    dims.validate(world, model=mcfg, seq_len=cfg.seq_len, batch_size=cfg.batch_size)
    mesh = dims.build_mesh(device.type) if dist.is_available() and dist.is_initialized() else None
    torch.manual_seed(cfg.seed)  # same weights on every rank (and in a 1-process run)
    with torch.device(device):
        model = build_model(mcfg)
    par = parallelize(model, dims, mesh, fsdp=cfg.fsdp,
                      activation_checkpointing=cfg.activation_checkpointing,
                      param_dtype=cfg.torch_dtype)
    return par, dataset, mcfg


class _Metrics:
    """JSON lines (and TensorBoard when installed) on rank 0."""

    def __init__(self, path: str | None, rank: int):
        self.file = self.tb = None
        if path is None or rank != 0:
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
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


def train(cfg: TrainConfig, *, device: torch.device | None = None, stop_at: int | None = None,
          quiet: bool = False,
          on_gradients: Callable[[int, Parallelized], None] | None = None) -> TrainResult:
    """Train per ``cfg`` (degrees already resolved); returns the history on every rank.

    ``stop_at`` ends the run early after that many steps (the LR schedule still
    follows ``cfg.steps``): tests use it to interrupt and resume a run.
    ``on_gradients(step, par)`` sees the reduced gradients before clipping
    (the gradient-parity test gathers them with ``par.full_gradients()``).
    """
    rank, world = _world()
    device = device or torch.device("cpu")
    par, dataset, mcfg = build(cfg, device)
    model = par.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=cfg.weight_decay)
    start = 0
    resume_from = resolve_resume(cfg.resume, cfg.checkpoint_dir)
    if resume_from is not None:
        start = load_checkpoint(resume_from, par, optimizer)
        if rank == 0 and not quiet:
            print(f"resumed from {resume_from} at step {start}", flush=True)
    autocast = torch.autocast(device.type, dtype=cfg.torch_dtype,
                              enabled=cfg.torch_dtype != torch.float32)
    dp_rank, tp_rank = par.local_rank("dp"), par.local_rank("tp")
    sp_group = par.sp_mesh  # hybrid: the 2-D mesh, whose slice order shard() knows
    metrics = _Metrics(cfg.metrics, rank)
    result = TrainResult(start_step=start, chance=getattr(dataset, "chance", 0.0))
    show = rank == 0 and not quiet
    tty = show and sys.stdout.isatty()
    if show:
        n = sum(p.numel() for p in model.parameters())
        print(f"seqpar train: {cfg.model} ({mcfg.arch}, {n / 1e6:.2f}M local params) | "
              f"{par.dims.describe()} | world {world} on {device.type} | "
              f"{'fsdp' if par.fsdp else 'replicated'} | data {cfg.data} | "
              f"seq_len {cfg.seq_len} x batch {cfg.batch_size} | {cfg.dtype}", flush=True)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    timed_tokens, timed_seconds = 0, 0.0
    recent_acc: list[float] = []
    for step in range(start, end):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens, labels = dataset.batch(step, cfg.batch_size, cfg.seed)
        documents = (dataset.cu_seqlens(tokens)
                     if cfg.documents and hasattr(dataset, "cu_seqlens") else None)
        batch = shard_batch(tokens, labels, sp_group=sp_group, layout=cfg.layout,
                            dp_rank=dp_rank, dp=cfg.dp, tp_rank=tp_rank, tp=cfg.tp,
                            cu_seqlens=documents).to(device)
        with autocast:
            logits = model(batch.tokens, batch.position_ids, documents=batch.cu_seqlens)
        out = sp_exact_loss(logits, batch.labels, par.group("world"))
        out.backward_loss.backward()
        sync_gradients(par)
        if on_gradients is not None:
            on_gradients(step, par)
        grad_norm = clip_grad_norm(par, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        n_tokens = cfg.batch_size * cfg.seq_len
        if step > start:  # the first step pays for warm-up (allocations, plans)
            timed_tokens += n_tokens
            timed_seconds += dt
        result.losses.append(out.loss)
        result.accuracies.append(out.accuracy)
        recent_acc = (recent_acc + [out.accuracy])[-20:]
        done = step + 1
        tps = timed_tokens / timed_seconds if timed_seconds else n_tokens / dt
        metrics.write({"step": done, "loss": out.loss, "accuracy": out.accuracy, "lr": lr,
                       "grad_norm": grad_norm, "tokens_per_s": n_tokens / dt,
                       "step_time_s": dt, "labelled_tokens": out.tokens})
        if show and (tty or done % cfg.log_every == 0 or done == end or done == start + 1):
            acc = sum(recent_acc) / len(recent_acc)
            bar = _bar(done, cfg.steps)
            line = (f"{bar} step {done}/{cfg.steps} | loss {out.loss:.4f} | "
                    f"acc {100 * acc:5.1f}%{_chance(result.chance)} | "
                    f"{tps:,.0f} tok/s | lr {lr:.2e}")
            print(("\r" + line) if tty else line, end="" if tty and done < end else "\n",
                  flush=True)
        if cfg.checkpoint_dir and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            path = save_checkpoint(cfg.checkpoint_dir, done, par, optimizer,
                                   keep=cfg.keep_checkpoints)
            if show:
                print(("\n" if tty else "") + f"saved {path}", flush=True)
    metrics.close()
    result.tokens_per_s = timed_tokens / timed_seconds if timed_seconds else 0.0
    result.final_accuracy = sum(recent_acc) / len(recent_acc) if recent_acc else 0.0
    mem = _peak_memory_mb(device)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mem)
        result.peak_memory_mb = [float(m) for m in gathered]
    else:
        result.peak_memory_mb = [mem]
    if show and result.losses:
        kind = "GPU allocated" if device.type == "cuda" else "RSS"
        print(f"summary: {len(result.losses)} steps | final loss {result.losses[-1]:.4f} | "
              f"accuracy (last 20 steps) {100 * result.final_accuracy:.1f}%"
              f"{_chance(result.chance)} | {result.tokens_per_s:,.0f} tokens/s | "
              f"peak memory per rank ({kind}, MiB): "
              + ", ".join(f"{m:.0f}" for m in result.peak_memory_mb), flush=True)
    return result


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _chance(chance: float) -> str:
    """`` (chance x%)`` for the synthetic tasks; nothing for text (no fixed chance)."""
    return f" (chance {100 * chance:.1f}%)" if chance > 0 else ""
