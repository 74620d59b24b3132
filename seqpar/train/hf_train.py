"""``seqpar train --hf PATH``: fine-tune a local Hugging Face causal LM folder.

The native loop's pieces are reused (AdamW settings, LR schedule, progress and
metrics lines, the SP-exact loss); what differs lives here: the model is built
on the meta device from the folder's config with ``attn_implementation="seqpar"``,
sharded with FSDP2 over dp x sp, materialised with ``to_empty`` and filled by
:func:`seqpar.hf.load_weights` (each rank reads only its shard), and batches are
the model tokenizer's packed documents (:mod:`.hf_data`).

Checkpoints are the native loop's (:mod:`.checkpoint`: DCP of model + AdamW state +
step, atomic, reshardable over dp x sp x tp) through the same
:class:`~seqpar.parallel.Parallelized` handle, whose tp plan is the
``{param: dim}`` of :func:`seqpar.hf.apply_tensor_parallel`; gradient sync and
clipping are the native ones (:mod:`seqpar.parallel.gradients`). Batches are a
pure function of ``(seed, step)``, so resuming needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from ..parallel import Parallelized, clip_grad_norm_tensor, sync_gradients
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .hf_data import HFTextDataset, split_data_paths
from .preflight import resume_target
from .progress import Metrics, Progress, TrainResult
from .resume import resolve_resume
from .step import (
    GradientHook,
    StepOutput,
    autocast_for,
    chunked_head_loss,
    lr_at,
    make_optimizer,
)


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loading failure is the same error
        raise ValueError(f"--hf {path}: cannot load its tokenizer ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def preflight_hf(cfg: TrainConfig, world: int) -> None:
    """Everything checkable before spawning: the folder, tokenizer, data, degrees."""
    import seqpar.hf as sh

    from .preflight import check_values

    check_values(cfg)
    if cfg.vocab_size is not None:  # the vocabulary is the folder's (config.json)
        raise ValueError(f"--vocab-size {cfg.vocab_size}: an --hf model's vocabulary is its "
                         f"config.json's vocab_size; drop --vocab-size")
    config = sh.check_model_folder(cfg.hf)
    sh.check_tokenizer(_tokenizer(cfg.hf), config)
    for p in split_data_paths(cfg.data):
        if not Path(p).exists():
            raise ValueError(f"data file {p!r} does not exist")
    shape = SimpleNamespace(n_heads=config.num_attention_heads,
                            n_kv_heads=getattr(config, "num_key_value_heads", None),
                            ffn_dim=getattr(config, "intermediate_size", None))
    cfg.parallel_dims().validate(world, model=shape, seq_len=cfg.seq_len,
                                 batch_size=cfg.batch_size)
    resume_target(cfg)  # --resume without a checkpoint: one line here, not in the ranks


def build_hf(cfg: TrainConfig, device: torch.device) -> Parallelized:
    """The folder's model as a :class:`~seqpar.parallel.Parallelized` handle: seqpar
    attention over the sp group, TP-SP over tp (its ``{param: dim}`` is the handle's
    tp plan), FSDP2 over dp x sp, weights read shard by shard."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import seqpar.hf as sh
    from seqpar.hf.fsdp import materialize
    from seqpar.hf.memory import apply_memory

    config = AutoConfig.from_pretrained(cfg.hf, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="seqpar",
                                                 torch_dtype=torch.float32)
    grouped = dist.is_available() and dist.is_initialized()
    dims = cfg.parallel_dims()
    mesh = dims.build_mesh(device.type) if grouped else None
    par = Parallelized(model=model, dims=dims, mesh=mesh, fsdp=cfg.fsdp and mesh is not None)
    sh.apply(model, group=par.sp_mesh, strategy=cfg.strategy, layout=cfg.layout)
    tp_group = par.group("tp")
    if dims.tp > 1:
        par.tp_plan = sh.apply_tensor_parallel(model, tp_group)
    # memory options (docs/memory.md): tiled MLP, checkpointing modes, head_loss=
    par.activation_offload = apply_memory(model, mlp_chunk=cfg.mlp_chunk,
                                          activation_checkpointing=cfg.checkpointing_mode,
                                          offload_layers=cfg.offload_layers)
    if cfg.offload_optimizer and not par.fsdp:
        raise ValueError("--offload-optimizer needs FSDP2 over more than one rank "
                         "(--fsdp and a process group)")
    if par.fsdp:
        sh.fully_shard_model(model, par.submesh("dp_sp"), param_dtype=cfg.torch_dtype,
                             offload_optimizer=cfg.offload_optimizer)
    materialize(model, device, offload_optimizer=cfg.offload_optimizer)
    sh.load_weights(model, cfg.hf, tp_sharded=par.tp_plan, tp_group=tp_group)
    model.train()
    return par


def train_hf(cfg: TrainConfig, *, device: torch.device | None = None,
             quiet: bool = False, on_gradients: GradientHook | None = None) -> TrainResult:
    """The ``--hf`` run of :func:`seqpar.train.loop.train` (same result type;
    ``on_gradients(step, par)`` sees the summed gradients before clipping)."""
    import seqpar.hf as sh

    device = device or torch.device("cpu")
    grouped = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if grouped else (0, 1)
    tokenizer = _tokenizer(cfg.hf)
    dataset = HFTextDataset(split_data_paths(cfg.data), cfg.seq_len, tokenizer)
    resume = resolve_resume(cfg.resume, cfg.checkpoint_dir)  # before any collective
    par = build_hf(cfg, device)
    model, dp_rank, tp_group = par.model, par.local_rank("dp"), par.group("tp")
    optimizer = make_optimizer(par, cfg)
    show = rank == 0 and not quiet
    for note in resume.notes if show else ():
        print(note, flush=True)
    start = load_checkpoint(resume.path, par, optimizer) if resume.path is not None else 0
    progress = Progress(steps=cfg.steps, start=start, end=cfg.steps,
                        tokens_per_step=cfg.batch_size * cfg.seq_len, log_every=cfg.log_every,
                        show=show, metrics=Metrics(cfg.metrics, rank, start), chance=0.0)
    if resume.path is not None:
        progress.say(f"resumed from {resume.path} at step {start}")
    n = sum(p.numel() for p in model.parameters())
    progress.say(f"seqpar train: --hf {cfg.hf} ({model.config.model_type}, {n / 1e6:.2f}M "
                 f"local params) | {cfg.parallel_dims().describe()} | world {world} on "
                 f"{device.type} | data {cfg.data} | seq_len {cfg.seq_len} x batch "
                 f"{cfg.batch_size} | {cfg.dtype}")
    autocast = autocast_for(device, cfg.torch_dtype)
    rows = cfg.batch_size // cfg.dp
    saved = start if resume.path is not None else None
    for step in range(start, cfg.steps):
        progress.step_started()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens, positions = dataset.batch(step, cfg.batch_size, cfg.seed)
        # (B, L) -> (B/dp, L): this dp replica's rows
        tokens = tokens[dp_rank * rows:(dp_rank + 1) * rows]
        positions = positions[dp_rank * rows:(dp_rank + 1) * rows]
        batch = sh.shard_batch(tokens, group=par.sp_mesh, layout=cfg.layout, tp_group=tp_group,
                               position_ids=positions if cfg.documents else None).to(device)
        with autocast:
            if cfg.loss_chunk:  # the head and the loss fused, no whole logits
                out = model(**batch.model_kwargs(), head_loss=chunked_head_loss(
                    batch.labels, None, cfg.loss_chunk))  # None: the world (dp x sp)
            else:
                logits = model(**batch.model_kwargs()).logits
        if not cfg.loss_chunk:
            out = sh.loss(logits, batch.labels, group=None)  # None: the world (dp x sp)
        out.backward_loss.backward()
        sync_gradients(par)  # tp: replicated parameters summed over tp too
        if on_gradients is not None:
            on_gradients(step, par)
        norm = clip_grad_norm_tensor(par, cfg.grad_clip)  # stays on the device (no sync)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total, count, correct = out.stats.unbind()  # global; read once per logged step
        progress.step_done(step, StepOutput(loss=total / count.clamp(min=1.0),
                                            accuracy=correct / count.clamp(min=1.0),
                                            tokens=count, grad_norm=norm, lr=lr), device)
        if cfg.checkpoint_dir and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            saved = _save(cfg, step + 1, par, optimizer, progress)
    if cfg.checkpoint_dir and cfg.steps > start and saved != cfg.steps:
        _save(cfg, cfg.steps, par, optimizer, progress)
    result = progress.finish(device, world)
    if cfg.save_hf:
        # collective; rank 0 writes
        sh.save_weights(model, cfg.save_hf, tp_sharded=par.tp_plan, tp_group=tp_group)
        if rank == 0:
            tokenizer.save_pretrained(cfg.save_hf)
            model.config.save_pretrained(cfg.save_hf)
        progress.say(f"saved a Hugging Face folder to {cfg.save_hf}")
        if grouped:
            dist.barrier()
    return result


def _save(cfg: TrainConfig, step: int, par: Parallelized, optimizer, progress: Progress) -> int:
    path = save_checkpoint(cfg.checkpoint_dir, step, par, optimizer,
                           keep=cfg.keep_checkpoints)
    progress.say(f"saved {path}")
    return step
