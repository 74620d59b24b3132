"""``seqpar train``: options / TOML -> TrainConfig -> processes -> :func:`train`.

Launch modes, decided here and nowhere below:

* under ``torchrun`` (``RANK``/``WORLD_SIZE`` set): join the launcher's group
  (NCCL on GPUs, gloo on CPU), one process per rank, multi-node the torchrun way;
* otherwise spawn ``--nproc`` local processes (default: every visible GPU, or 4
  gloo processes on a CPU-only machine) on a free port;
* ``--nproc 1``: train in this process, without torch.distributed.

The configuration is validated (degrees, heads, length, batch) before any
process group exists, so a bad one is an error message, not a hang.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import fields
from pathlib import Path

from ..launch import free_port, leaving_group_after, under_launcher
from .config import DTYPES, TrainConfig

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
    "activation_checkpointing": "recompute each block in backward",
    "log_every": "progress line every N steps (every step on a terminal)",
    "keep_checkpoints": "keep the newest N checkpoints",
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
        elif f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=_HELP[f.name])
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            p.add_argument(flag, type=kind, help=_HELP[f.name])
    return p


def load_toml(path: str | Path) -> dict:
    """Keys of a TOML file (flat, or under ``[train]``), with ``-`` read as ``_``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError(f"reading {path} needs Python >= 3.11 or `pip install tomli`") \
                from None
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    if isinstance(data.get("train"), dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(out) - set(TrainConfig.keys()))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {TrainConfig.keys()}")
    return out


def parse_config(argv: list[str]) -> TrainConfig:
    """Defaults, then the TOML file, then the command line."""
    args = vars(build_parser().parse_args(argv))
    values: dict = {}
    if "config" in args:
        values.update(load_toml(args.pop("config")))
    values.update(args)
    return TrainConfig(**values)


def _check(cfg: TrainConfig, world: int) -> None:
    """Everything checkable before process groups exist; ValueError listing every degree."""
    from ..data import make_dataset
    from ..models import model_config

    mcfg = model_config(cfg.model)
    make_dataset(cfg.data, cfg.seq_len, arch=mcfg.arch)
    cfg.parallel_dims().validate(world, model=mcfg, seq_len=cfg.seq_len,
                                 batch_size=cfg.batch_size)
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.seq_len < 1:
        raise ValueError(f"steps, batch_size and seq_len must be >= 1, got {cfg.steps}, "
                         f"{cfg.batch_size}, {cfg.seq_len}")
    from .resume import resolve_resume

    resolve_resume(cfg.resume, cfg.checkpoint_dir)  # an unreadable checkpoint: error here


def _run_rank(rank: int, world: int, local_rank: int, cfg_dict: dict) -> None:
    """One process of a run: join the group, train, leave."""
    import torch
    import torch.distributed as dist

    from ..comm import DEFAULT_TIMEOUT
    from .loop import train

    cuda = torch.cuda.is_available()
    cfg = TrainConfig(**cfg_dict).resolve(world, cuda=cuda)
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.nproc or world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                            timeout=DEFAULT_TIMEOUT,
                            **({"device_id": device} if cuda else {}))
    with leaving_group_after():
        train(cfg, device=device, quiet=rank != 0)


def _spawned(local_rank: int, world: int, port: int, cfg_dict: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world))
    try:
        _run_rank(local_rank, world, local_rank, cfg_dict)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except SystemExit:  # train.preemption.Preempted: 143 (SIGTERM) / 130 (SIGINT)
        raise
    except BaseException:
        print(f"[rank {local_rank}] failed:\n{traceback.format_exc()}", file=sys.stderr,
              flush=True)
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``seqpar train``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(argv)
    except (ValueError, OSError) as exc:
        print(f"seqpar train: error: {exc}", file=sys.stderr)
        return 2
    import torch

    cuda = torch.cuda.is_available()
    if under_launcher():
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        given = [cfg.dp, cfg.sp, cfg.tp]
        if cfg.nproc is not None:
            world = cfg.nproc
        elif cuda:
            world = torch.cuda.device_count()
        elif cfg.sp is not None:
            world = (cfg.dp or 1) * cfg.sp * (cfg.tp or 1)
        else:
            world = 4 if all(g is None for g in given) else max(4, (cfg.dp or 1) * (cfg.tp or 1))
        if cuda and world > torch.cuda.device_count():
            print(f"seqpar train: error: --nproc {world} > {torch.cuda.device_count()} visible "
                  f"GPUs", file=sys.stderr)
            return 2
        cfg.nproc = world
    try:
        resolved = cfg.resolve(world, cuda=cuda)
        _check(resolved, world)
    except ValueError as exc:
        print(f"seqpar train: error: {exc}", file=sys.stderr)
        return 2
    if under_launcher():
        _run_rank(rank, world, local_rank, cfg.to_dict())
        return 0
    if world == 1:
        from .loop import train

        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        train(resolved, device=device)
        return 0
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        mp.start_processes(_spawned, args=(world, free_port(), cfg.to_dict()), nprocs=world,
                           start_method="spawn", join=True)
    except mp.ProcessRaisedException as exc:
        print(f"seqpar train: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    except mp.ProcessExitedException as exc:
        print(f"seqpar train: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
