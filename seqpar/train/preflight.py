"""Everything ``seqpar train`` can check before a process exists.

A problem found inside the ranks costs a spawn, a group and (before the shared
launcher) one traceback per rank; found here it is one ``seqpar train: error:``
line within a second. Checked: option ranges, the data source, the parallel
degrees, the ``--resume`` target (exists, has DCP metadata) and that the
checkpoint's tensors have the configured model's shapes (read from the DCP
metadata, against a model built on the meta device: no memory, no group).
"""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig

#: (field, lowest allowed, inclusive?) for the numeric options.
_RANGES = [("steps", 1, True), ("batch_size", 1, True), ("seq_len", 1, True),
           ("lr", 0, False), ("warmup", 0, True), ("min_lr_ratio", 0, True),
           ("weight_decay", 0, True), ("grad_clip", 0, True), ("checkpoint_every", 0, True),
           ("log_every", 1, True), ("keep_checkpoints", 1, True), ("nproc", 1, True),
           ("dp", 1, True), ("sp", 1, True), ("tp", 1, True), ("ulysses", 1, True),
           ("ring", 1, True), ("vocab_size", 1, True),
           ("loss_chunk", 0, True), ("mlp_chunk", 0, True), ("offload_layers", 0, True),
           ("pp", 1, True), ("microbatches", 1, True), ("virtual_stages", 1, True),
           ("n_layers", 1, True)]


def check_values(cfg: TrainConfig) -> None:
    """ValueError listing every option out of range (``--lr -1``, ``--steps 0``, ...)."""
    bad = []
    for name, low, inclusive in _RANGES:
        value = getattr(cfg, name)
        if value is None:
            continue
        if value < low or (value == low and not inclusive):
            op = ">=" if inclusive else ">"
            bad.append(f"--{name.replace('_', '-')} must be {op} {low}, got {value}")
    if cfg.min_lr_ratio > 1:
        bad.append(f"--min-lr-ratio must be <= 1, got {cfg.min_lr_ratio}")
    if cfg.checkpoint_every and not cfg.checkpoint_dir:
        bad.append(f"--checkpoint-every {cfg.checkpoint_every} needs --checkpoint-dir")
    bad += memory_problems(cfg)
    bad += linformer_problems(cfg)
    if bad:
        raise ValueError("; ".join(bad))


def linformer_problems(cfg: TrainConfig) -> list[str]:
    """``--attention linformer`` with what it cannot run with (the model's own checks,
    bert-* and k <= L, run when its config is built)."""
    from ..parallel.linformer import linformer_dims_problems

    if cfg.attention == "softmax":
        return []
    if cfg.attention != "linformer":
        return [f"--attention {cfg.attention!r}: choose softmax or linformer"]
    bad = []
    if not cfg.model.startswith("bert-"):
        bad.append(f"--attention linformer needs a bert-* encoder, got --model {cfg.model} "
                   f"(Linformer is not defined for causal decoders)")
    if cfg.linformer_k <= 0 or cfg.linformer_k > cfg.seq_len:
        bad.append(f"--linformer-k {cfg.linformer_k} must be in 1..--seq-len {cfg.seq_len}")
    if cfg.data not in ("passkey", "kv") and cfg.documents:
        bad.append("--attention linformer attends across the whole sequence: packed text "
                   "needs --no-documents")
    bad += [f"--attention linformer: {p}" for p in linformer_dims_problems(cfg.parallel_dims())]
    return bad


def memory_problems(cfg: TrainConfig) -> list[str]:
    """The memory options that do not compose with the rest (docs/memory.md)."""
    from .config import AC_MODES

    bad = []
    mode = cfg.checkpointing_mode
    if mode not in AC_MODES:
        bad.append(f"--activation-checkpointing {mode!r}: choose one of {AC_MODES}")
    if cfg.offload_layers and mode == "none":
        bad.append(f"--offload-layers {cfg.offload_layers} needs --activation-checkpointing "
                   f"offload, full or selective (the rest of the layers; got {mode})")
    if (cfg.tp or 1) > 1:
        for name in ("loss_chunk", "mlp_chunk"):
            if getattr(cfg, name):
                bad.append(f"--{name.replace('_', '-')} {getattr(cfg, name)} needs tp=1 "
                           f"(got tp={cfg.tp}): the head / MLP is sharded under TP")
    if cfg.offload_optimizer and not cfg.fsdp:
        bad.append("--offload-optimizer needs --fsdp")
    return bad


def resume_target(cfg: TrainConfig) -> Path | None:
    """The checkpoint ``--resume`` will load, or None for a fresh start (the rules of
    :func:`seqpar.train.resume.resolve_resume`, which the ranks apply again)."""
    from .resume import resolve_resume

    return resolve_resume(cfg.resume, cfg.checkpoint_dir).path


def check_checkpoint_model(path: Path, cfg: TrainConfig, vocab_size: int) -> None:
    """ValueError if the checkpoint at ``path`` holds other shapes than ``--model``'s."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from ..models import build_model, model_config

    try:
        meta = FileSystemReader(str(path)).read_metadata()
    except Exception as exc:  # noqa: BLE001 - any unreadable metadata is the same error
        raise ValueError(f"checkpoint {path}: cannot read its metadata "
                         f"({type(exc).__name__}: {exc})") from None
    saved = {k[len("model."):]: tuple(v.size) for k, v in meta.state_dict_metadata.items()
             if k.startswith("model.") and isinstance(v, TensorStorageMetadata)}
    with torch.device("meta"):
        model = build_model(model_config(cfg.model, **cfg.model_overrides(vocab_size)))
    want = {name: tuple(p.shape) for name, p in model.named_parameters()}
    problems = [f"{n} is {saved[n]} there, {shape} here" for n, shape in want.items()
                if n in saved and saved[n] != shape]
    missing = sorted(set(want) - set(saved))
    extra = sorted(set(saved) - set(want))
    if missing:
        problems.append(f"{len(missing)} parameters missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unknown tensors (e.g. {extra[0]})")
    if problems:
        raise ValueError(f"checkpoint {path} does not fit --model {cfg.model}: "
                         + "; ".join(problems[:3]))


def preflight(cfg: TrainConfig, world: int) -> Path | None:
    """Check a resolved config for ``world`` ranks; returns the checkpoint to resume from."""
    from ..data import make_dataset
    from ..models import model_config

    if cfg.hf and cfg.attention != "softmax":
        raise ValueError(f"--attention {cfg.attention} is for seqpar's bert-* models, not --hf")
    if cfg.hf and cfg.pp != 1:
        raise ValueError(f"--hf with --pp {cfg.pp}: pipeline stages of Hugging Face models "
                         f"are not supported yet; use --pp 1")
    if cfg.hf:
        from .hf_train import preflight_hf

        preflight_hf(cfg, world)
        return None
    if cfg.save_hf:
        raise ValueError(f"--save-hf {cfg.save_hf} exports a --hf model; pass --hf PATH")
    check_values(cfg)
    mcfg = model_config(cfg.model)
    dataset = make_dataset(cfg.data, cfg.seq_len, arch=mcfg.arch)
    vocab = cfg.model_vocab(dataset.vocab_size)
    mcfg = model_config(cfg.model, **cfg.model_overrides(dataset.vocab_size))
    cfg.parallel_dims().validate(world, model=mcfg, seq_len=cfg.seq_len,
                                 batch_size=cfg.batch_size)
    target = resume_target(cfg)
    if target is not None:
        check_checkpoint_model(target, cfg, vocab)
    return target
