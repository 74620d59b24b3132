"""The training loop: build, resume, repeat :func:`train_step`, checkpoint, report.

``train(cfg)`` runs in every process of an already initialised process group
(or in one process with no torch.distributed at all). Each step every rank
builds the same global batch, keeps its shard and runs :func:`train_step`; the
SP-exact loss makes the result independent of how the batch was split.

Around the steps: what to resume is decided before anything is built
(``resume.py``), a checkpoint is written every ``checkpoint_every`` steps and
at the end of every run that has a ``checkpoint_dir``, and SIGTERM / SIGINT
stop all ranks after the same step with a checkpoint (``preemption.py``).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from ..data import LocalBatch, make_dataset, shard_batch
from ..memory.meta_init import materialize
from ..models import build_model, model_config
from ..parallel import Parallelized, parallelize
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .pipeline_step import pipeline_train_step
from .preemption import Preempted, StopOnSignal
from .progress import Metrics, Progress, TrainResult
from .resume import resolve_resume
from .speed import StepProfiler, apply_fused, mfu_function
from .step import GradientHook, autocast_for, lr_at, make_optimizer, train_step

__all__ = ["TrainResult", "build", "lr_at", "train"]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build(cfg: TrainConfig, device: torch.device) -> tuple[Parallelized, object, object]:
    """Dataset, model and its parallel handle, built identically on every rank."""
    _, world = _world()
    dims = cfg.parallel_dims()
    mcfg = model_config(cfg.model)
    dataset = make_dataset(cfg.data, cfg.seq_len, arch=mcfg.arch)
    mcfg = model_config(cfg.model, **cfg.model_overrides(dataset.vocab_size))
    dims.validate(world, model=mcfg, seq_len=cfg.seq_len, batch_size=cfg.batch_size)
    mesh = dims.build_mesh(device.type) if dist.is_available() and dist.is_initialized() else None
    torch.manual_seed(cfg.seed)
    with torch.device("meta"):  # no storage: each rank materialises only its shards below
        model = build_model(mcfg)
    apply_fused(model, cfg.fused)  # --fused liger (speed.py)
    if dims.pp > 1:  # this rank's pipeline stages (seqpar.parallel.pipeline)
        from ..parallel.pipeline import parallelize_pipeline

        par = parallelize_pipeline(model, dims, mesh, device=device, batch_size=cfg.batch_size,
                                   seq_len=cfg.seq_len, fsdp=cfg.fsdp,
                                   activation_checkpointing=cfg.checkpointing_mode,
                                   mlp_chunk=cfg.mlp_chunk, offload_layers=cfg.offload_layers,
                                   offload_optimizer=cfg.offload_optimizer,
                                   param_dtype=cfg.torch_dtype, loss_chunk=cfg.loss_chunk)
        # this rank's stages only, under the whole model's names (same values as pp=1)
        materialize(par.model, mcfg, cfg.seed, device, tp_plan=par.tp_plan,
                    tp_rank=par.local_rank("tp"), tp=cfg.tp)
        return par, dataset, mcfg
    par = parallelize(model, dims, mesh, fsdp=cfg.fsdp,
                      activation_checkpointing=cfg.checkpointing_mode,
                      mlp_chunk=cfg.mlp_chunk, offload_layers=cfg.offload_layers,
                      offload_optimizer=cfg.offload_optimizer,
                      param_dtype=cfg.torch_dtype, compile=cfg.compile)
    if cfg.fsdp_prefetch and par.fsdp:  # --fsdp-prefetch (speed.py checks it needs FSDP2)
        from ..parallel.prefetch import set_fsdp_prefetch
        set_fsdp_prefetch(par.model, cfg.fsdp_prefetch)
    # same weights on every rank and in a 1-process run (a function of seed, name, row)
    materialize(model, mcfg, cfg.seed, device, tp_plan=par.tp_plan,
                tp_rank=par.local_rank("tp"), tp=cfg.tp, seq_sharded=par.seq_sharded)
    return par, dataset, mcfg


def local_batch(cfg: TrainConfig, dataset, par: Parallelized, step: int,
                device: torch.device) -> LocalBatch:
    """This rank's shard of step ``step``'s global batch (a pure function of seed, step)."""
    tokens, labels = dataset.batch(step, cfg.batch_size, cfg.seed)
    documents = (dataset.cu_seqlens(tokens)
                 if cfg.documents and hasattr(dataset, "cu_seqlens") else None)
    return shard_batch(tokens, labels, sp_group=par.sp_mesh, layout=cfg.layout,
                       dp_rank=par.local_rank("dp"), dp=cfg.dp, tp_rank=par.local_rank("tp"),
                       tp=cfg.tp, cu_seqlens=documents).to(device)


def train(cfg: TrainConfig, *, device: torch.device | None = None, stop_at: int | None = None,
          quiet: bool = False, on_gradients: GradientHook | None = None) -> TrainResult:
    """Train per ``cfg`` (degrees already resolved); returns the history on every rank.

    ``stop_at`` ends the run early after that many steps (the LR schedule still
    follows ``cfg.steps``): tests use it to interrupt and resume a run.
    ``on_gradients(step, par)`` sees the reduced gradients before clipping
    (the gradient-parity test gathers them with ``par.full_gradients()``).
    Raises :class:`~seqpar.train.preemption.Preempted` (a ``SystemExit`` with
    code 143 / 130) after saving when SIGTERM / SIGINT stopped the run.
    """
    if cfg.hf:
        from .hf_train import train_hf

        return train_hf(cfg, device=device, quiet=quiet, on_gradients=on_gradients)
    rank, world = _world()
    device = device or torch.device("cpu")
    resume = resolve_resume(cfg.resume, cfg.checkpoint_dir)  # ValueError before any collective
    built = time.perf_counter()
    par, dataset, mcfg = build(cfg, device)
    built = time.perf_counter() - built
    optimizer = make_optimizer(par, cfg)
    show = rank == 0 and not quiet
    for note in resume.notes if show else ():  # before loading: what loads, what is skipped
        print(note, flush=True)
    start = load_checkpoint(resume.path, par, optimizer) if resume.path is not None else 0
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    progress = Progress(steps=cfg.steps, start=start, end=end,
                        tokens_per_step=cfg.batch_size * cfg.seq_len, log_every=cfg.log_every,
                        show=show, metrics=Metrics(cfg.metrics, rank, start),
                        chance=getattr(dataset, "chance", 0.0), world=world,
                        mfu=mfu_function(cfg, mcfg, device))
    profiler = StepProfiler(cfg.profile_step, device)
    if resume.path is not None:
        progress.say(f"resumed from {resume.path} at step {start}")
    if start >= cfg.steps:
        progress.say(f"nothing to train: the checkpoint is at step {start} and --steps is "
                     f"{cfg.steps}; pass --steps > {start} to train further", err=True)
    n = sum(p.numel() for p in par.model.parameters())
    progress.say(f"seqpar train: {cfg.model} ({mcfg.arch}, {n / 1e6:.2f}M local params) | "
                 f"{par.dims.describe()} | world {world} on {device.type} | "
                 f"{'fsdp' if par.fsdp else 'replicated'} | data {cfg.data} | "
                 f"seq_len {cfg.seq_len} x batch {cfg.batch_size} | {cfg.dtype}")
    progress.say(f"start-up: model built on the meta device, this rank's shards initialised "
                 f"in {built:.1f} s")
    autocast = autocast_for(device, cfg.torch_dtype)
    step_fn = pipeline_train_step if par.dims.pp > 1 else train_step
    saved = start if resume.path is not None else None  # the step the newest save holds
    done, stopped_by = start, 0
    with StopOnSignal() as stop:
        for step in range(start, end):
            progress.step_started()
            with profiler.around(step, progress):
                out = step_fn(par, optimizer, local_batch(cfg, dataset, par, step, device),
                              step=step, lr=lr_at(step, cfg), grad_clip=cfg.grad_clip,
                              autocast=autocast, on_gradients=on_gradients,
                              loss_chunk=cfg.loss_chunk)
            done = step + 1
            profiler.report(step, progress)
            progress.step_done(step, out, device)
            stopped_by = stop.agreed(device)  # every rank stops after the same step
            if stopped_by:
                break
            if cfg.checkpoint_dir and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                saved = _save(cfg, done, par, optimizer, progress)
        if cfg.checkpoint_dir and done > start and saved != done:  # every run's end, once
            saved = _save(cfg, done, par, optimizer, progress)
        result = progress.finish(device, world)
        if stopped_by:
            where = checkpoint_path(cfg.checkpoint_dir, done) if cfg.checkpoint_dir else None
            stopped = Preempted(stopped_by, done, where, result)
            progress.say(f"seqpar train: {stopped}"
                         + ("; continue with --resume" if where else ""), err=True)
            raise stopped
    return result


def _save(cfg: TrainConfig, step: int, par: Parallelized, optimizer, progress: Progress) -> int:
    progress.flush(next(par.model.parameters()).device)  # the steps before the save
    path = save_checkpoint(cfg.checkpoint_dir, step, par, optimizer, keep=cfg.keep_checkpoints)
    progress.say(f"saved {path}")
    return step
