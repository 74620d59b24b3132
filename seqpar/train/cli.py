"""``seqpar train``: options / TOML -> TrainConfig -> processes -> :func:`train`.

Launch modes, decided here and nowhere below:

* under ``torchrun`` (``RANK``/``WORLD_SIZE`` set): join the launcher's group
  (NCCL on GPUs, gloo on CPU), one process per rank, multi-node the torchrun way;
* otherwise spawn ``--nproc`` local processes (default: every visible GPU, or 4
  gloo processes on a CPU-only machine) on a free port;
* ``--nproc 1`` on a CPU: train in this process, without torch.distributed (the
  parity tests' reference run). On one GPU it is a spawned group of one rank, so the
  model gets FSDP2's bf16 compute copies like every multi-GPU run (and the memory
  planner's model of it), not fp32 weights under autocast.

Spawned ranks go through the shared launcher (:mod:`seqpar.launch`): SIGTERM or
SIGINT to this process reaches every rank, and a failure inside a rank is one
``seqpar train: error: rank R: ...`` line naming its log file. Everything that
can be checked (types, ranges, degrees, heads, length, batch, the resume target
and its model shapes: :mod:`.preflight`) is checked before any process starts,
so a bad configuration is one error line, not a hang or a traceback per rank.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from ..launch import in_group, run_here, spawn, under_launcher
from .config import AC_MODES, DTYPES, TrainConfig
from .memory_plan import default_checkpointing, plan_memory
from .preflight import preflight
from .speed import check_speed_options

_HELP = {
    "model": "model size: tiny, 125m, 1b, 8b, bert-tiny, bert-base, bert-large",
    "seq_len": "global sequence length (tokens), split across the sp (and tp) ranks",
    "batch_size": "global batch size (sequences), split across the dp ranks",
    "steps": "optimizer steps",
    "lr": "peak learning rate (AdamW; linear warmup, cosine decay)",
    "seed": "seed for weights and data",
    "nproc": "local processes to spawn when not under torchrun "
             "(default: all GPUs, or 4 on a CPU-only machine)",
    "dp": "data-parallel degree (default 1)",
    "sp": "sequence-parallel degree (default: the rest of the world)",
    "tp": "tensor-parallel degree, Megatron TP-SP (default 1)",
    "strategy": "sequence-parallel attention: rsa, ring, ulysses, allgather, hybrid",
    "ulysses": "hybrid: all-to-all degree (ulysses x ring = sp; default 2 when sp is even)",
    "ring": "hybrid: ring degree (default sp / ulysses)",
    "layout": "token layout: contiguous, zigzag, striped",
    "dtype": f"compute dtype {tuple(DTYPES)} (default bfloat16 on GPU, float32 on CPU)",
    "metrics": "write one JSON line per step here (and TensorBoard when installed)",
    "checkpoint_dir": "folder for checkpoints (torch.distributed.checkpoint)",
    "checkpoint_every": "save every N steps (0: never)",
    "resume": "resume from the newest checkpoint in --checkpoint-dir, or from PATH",
    "config": "TOML file whose keys mirror these options (the command line wins)",
    "data": "passkey | kv (synthetic long-range tasks) or comma-separated .txt/.jsonl paths",
    "documents": "packed text: attention stays inside each document (--no-documents: "
                 "attend across EOS)",
    "warmup": "warmup steps",
    "min_lr_ratio": "final LR as a fraction of --lr",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "clip the global gradient norm to this (0: off)",
    "fsdp": "FSDP2 (ZeRO-3) over dp x sp; --no-fsdp replicates parameters (DDP-style)",
    "activation_checkpointing": "none | full | selective | offload (bare flag: full; "
                                "docs/memory.md)",
    "log_every": "progress line every N steps (every step on a terminal)",
    "keep_checkpoints": "keep the newest N checkpoints",
    "hf": "fine-tune a local Hugging Face causal LM folder (config.json, safetensors, "
          "tokenizer; needs --data text files; see docs/hf.md)",
    "save_hf": "with --hf: write the trained model as a Hugging Face folder here at the end",
    "loss_chunk": "tokens per chunk of the fused head + loss, no full logits (0: off)",
    "mlp_chunk": "tokens per MLP tile (0: off; tp=1 only)",
    "offload_layers": "with --activation-checkpointing offload: how many of the first "
                      "layers offload (default all; the rest: full)",
    "offload_optimizer": "FSDP2 CPU offload of parameters, gradients and optimizer state",
    "memory": "manual (refuse a configuration the planner predicts will not fit the GPU) "
              "or auto (the planner picks the memory options); docs/memory.md",
    "force": "run a --memory manual configuration predicted not to fit",
    "vocab_size": "model embedding/head rows (>= the data's vocabulary; default: the data's)",
    "compile": "torch.compile each transformer block (regional; attention stays eager)",
    "fused": "fused token-wise kernels: liger (RMSNorm, SwiGLU, RoPE; needs liger-kernel)",
    "profile_step": "profile this step (1-based) and print where its time goes "
                    "(docs/training.md)",
    "peak_tflops": "peak TFLOP/s per GPU for MFU (default 989 on a GPU: H100/H200 bf16 dense)",
    "fsdp_prefetch": "FSDP2 explicit all-gather prefetch, N blocks ahead (0: FSDP2's implicit "
                     "one-ahead)",
    "attention": "softmax (exact) or linformer (bert-* only: K/V projected along the "
                 "sequence to --linformer-k rows; docs/linformer.md)",
    "linformer_k": "with --attention linformer: projected length k (<= --seq-len)",
    "n_layers": "cut (or grow) --model to this many blocks (default: the size's own)",
    "pp": "pipeline-parallel degree: the layers are cut into pp stages (default 1; "
          "docs/training.md, 4D parallelism)",
    "pp_schedule": "pipeline schedule: gpipe, 1f1b, interleaved (default 1f1b)",
    "microbatches": "microbatches per step and dp rank in the pipeline (default: pp)",
    "virtual_stages": "stages per pp rank for --pp-schedule interleaved (>= 2)",
}


def build_parser() -> argparse.ArgumentParser:
    """All options default to ``None`` so we can tell given options from defaults."""
    p = argparse.ArgumentParser(
        prog="seqpar train",
        description="Train a long-context transformer with sequence parallelism "
                    "(composed with data and tensor parallelism).",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--config", metavar="TOML", help=_HELP["config"])
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "resume":
            p.add_argument(flag, nargs="?", const=True, metavar="PATH", help=_HELP[f.name])
        elif f.name == "activation_checkpointing":
            p.add_argument(flag, nargs="?", const="full", choices=AC_MODES, metavar="MODE",
                           help=_HELP[f.name])
            p.add_argument("--no-" + flag[2:], dest=f.name, action="store_const",
                           const="none", help="same as --activation-checkpointing none")
        elif f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=_HELP[f.name])
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            p.add_argument(flag, type=kind, help=_HELP[f.name])
    return p


def _read_toml(path: str | Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError(f"reading {path} needs Python >= 3.11 or `pip install tomli`") \
                from None
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def load_toml(path: str | Path) -> dict:
    """Keys of a TOML file (flat, or under ``[train]``), with ``-`` read as ``_``.

    A key given twice (flat and under ``[train]``, or as ``seq-len`` and
    ``seq_len``) is an error, as is a value of the wrong type, naming the key.
    """
    data = _read_toml(path)
    entries = []  # (option name, as written, value)
    for key, value in data.items():
        if key == "train" and isinstance(value, dict):
            entries += [(str(k).replace("-", "_"), f"[train] {k}", v) for k, v in value.items()]
        else:
            entries.append((str(key).replace("-", "_"), str(key), value))
    out: dict = {}
    written: dict[str, str] = {}
    twice = []
    for name, as_written, value in entries:
        if name in out:
            twice.append(f"{name} ({written[name]!r} and {as_written!r})")
        out[name], written[name] = value, as_written
    if twice:
        raise ValueError(f"{path}: keys given twice: {', '.join(twice)}; keep one of each")
    unknown = sorted(set(out) - set(TrainConfig.keys()))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {TrainConfig.keys()}")
    TrainConfig.check_types(out, str(path))
    return out


def parse_config(argv: list[str]) -> TrainConfig:
    """Defaults, then the TOML file, then the command line."""
    args = vars(build_parser().parse_args(argv))
    values: dict = {}
    if "config" in args:
        values.update(load_toml(args.pop("config")))
    values.update(args)
    return TrainConfig(**values)


def _train_rank(device, cfg_dict: dict) -> None:
    """One rank of a run, inside its group (see :func:`seqpar.launch.in_group`)."""
    import torch.distributed as dist

    from .loop import train

    cfg = TrainConfig(**cfg_dict).resolve(dist.get_world_size(), cuda=device.type == "cuda")
    train(cfg, device=device, quiet=dist.get_rank() != 0)


def _world_size(cfg: TrainConfig, cuda: bool, gpus: int) -> int:
    """Ranks to spawn: --nproc, else every GPU, else dp*sp*tp when sp is given, else 4."""
    if cfg.nproc is not None:
        return cfg.nproc
    if cuda:
        return gpus
    if cfg.sp is not None:
        return (cfg.dp or 1) * cfg.sp * (cfg.tp or 1) * (cfg.pp or 1)
    given = [cfg.dp, cfg.sp, cfg.tp]
    return 4 if all(g is None for g in given) else max(4, (cfg.dp or 1) * (cfg.tp or 1))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``seqpar train``; returns the exit status (2: a bad configuration,
    found before any process starts; 1: a rank failed; 128+N: stopped by signal N)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(argv)
    except (ValueError, OSError) as exc:
        print(f"seqpar train: error: {exc}", file=sys.stderr)
        return 2
    import torch

    cuda = torch.cuda.is_available()
    if under_launcher():
        world = int(os.environ["WORLD_SIZE"])
    else:
        gpus = torch.cuda.device_count() if cuda else 0
        world = _world_size(cfg, cuda, gpus)
        if cuda and world > gpus:
            print(f"seqpar train: error: --nproc {world} > {gpus} visible GPUs", file=sys.stderr)
            return 2
        cfg.nproc = world
    try:
        if cfg.nproc is not None and cfg.nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {cfg.nproc}")
        resolved = cfg.resolve(world, cuda=cuda)
        preflight(resolved, world)
        check_speed_options(resolved)
        # the planner models the native --model shapes only (an --hf model: not yet)
        if not resolved.hf and resolved.activation_checkpointing is None:
            chosen = default_checkpointing(resolved, cuda=cuda)  # the planner's fastest fit
            cfg.activation_checkpointing = resolved.activation_checkpointing = chosen
            if os.environ.get("RANK", "0") == "0" and cuda:
                print(f"activation checkpointing: {chosen} (the planner's fastest that fits; "
                      f"--activation-checkpointing MODE chooses)", flush=True)
        header = plan_memory([cfg], resolved, cuda=cuda)  # --hf: the folder's shape
        if header and os.environ.get("RANK", "0") == "0":
            print(header, flush=True)
    except (ValueError, OSError) as exc:
        print(f"seqpar train: error: {exc}", file=sys.stderr)
        return 2
    if under_launcher():
        return in_group(_train_rank, (cfg.to_dict(),))
    if world == 1 and not cuda:
        from .loop import train

        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        return run_here(lambda: train(resolved, device=device) and 0, prog="seqpar train")
    return spawn(in_group, world, _train_rank, (cfg.to_dict(),), prog="seqpar train").code
