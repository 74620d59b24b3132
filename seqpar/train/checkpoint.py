"""Distributed checkpoints with ``torch.distributed.checkpoint``: atomic, reshardable.

What is saved: every parameter and AdamW state (``exp_avg``, ``exp_avg_sq``,
``step``) under the dense model's names, the data position (the step: batches
are a pure function of ``(seed, step)``) and the RNG state.

Resharding: each tensor is saved as its *global* value. FSDP2 parameters are
already DTensors over ``dp x sp``; TP shards (plain tensors) are wrapped as
DTensors ``Shard(dim)`` over the tp mesh, with the dim the handle's tp plan
declares (read off the layer types, not the names). DCP then writes each piece once and
can load onto any other dp/sp/tp split.

Atomicity: every rank writes into ``.tmp-step-N``; once DCP has written its
metadata and every rank is past a barrier, rank 0 renames the folder to
``step-N`` (one ``rename``, atomic on a POSIX filesystem) and replaces the
``latest`` pointer file. A run killed mid-save leaves only a ``.tmp-*`` folder
behind, which loading ignores, so the previous checkpoint stays usable.
Which checkpoint a resume loads is decided in ``resume.py``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ..parallel import Parallelized
from .resume import PREFIX


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _is_dist() else 0


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns that it runs in one process even when told so (``no_dist``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if _is_dist():
        dist.barrier()


def _named_params(par: Parallelized) -> dict[str, torch.nn.Parameter]:
    return dict(par.model.named_parameters())


def _global_view(par: Parallelized, name: str, t: torch.Tensor) -> torch.Tensor:
    """The tensor DCP should see for ``t`` (a parameter or an optimizer state of it)."""
    if name in par.seq_sharded:  # Linformer E/F: the full (k, L), the same on every rank
        from ..parallel.linformer import gather_full
        return gather_full(par.seq_sharded[name], t)
    if name not in par.tp_plan or par.dims.tp == 1:
        return t  # plain replicated tensor, or an FSDP DTensor over dp x sp
    from torch.distributed.tensor import DTensor, Shard

    local = t.full_tensor() if isinstance(t, DTensor) else t  # the whole tp shard
    return DTensor.from_local(local, par.mesh["tp"], [Shard(par.tp_plan[name])],
                              run_check=False)


def _copy_back(par: Parallelized, name: str, target: torch.Tensor, view: torch.Tensor) -> None:
    """Write a loaded global view back into the live parameter / optimizer state
    (only TP and sequence shards need it: DCP loaded everything else in place)."""
    if name in par.seq_sharded:  # full (k, L) -> this rank's columns
        from ..parallel.linformer import slice_local
        target.copy_(slice_local(par.seq_sharded[name], view))
        return
    if name not in par.tp_plan or par.dims.tp == 1:
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    local = view.to_local() if isinstance(view, DTensor) else view  # the tp shard
    if isinstance(target, DTensor):  # FSDP shard of the tp shard
        piece = distribute_tensor(local, target.device_mesh, target.placements,
                                  src_data_rank=None)
        target.to_local().copy_(piece.to_local())
    else:
        target.copy_(local)


def ensure_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's lazily-made state (zeros) so a checkpoint can be loaded into it."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _state(par: Parallelized, optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    """The DCP state dict and the (name, live tensor, view) triples to copy back."""
    params = _named_params(par)
    links = []
    model_sd, optim_sd = {}, {}
    for name, p in params.items():
        view = _global_view(par, name, p.data)
        model_sd[name] = view
        links.append((name, p.data, view))
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                v = _global_view(par, name, state[key])
                optim_sd[f"{name}.{key}"] = v
                links.append((name, state[key], v))
        if "step" in state:
            optim_sd[f"{name}.step"] = state["step"]
    return {"model": model_sd, "optim": optim_sd}, links


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"{PREFIX}{step:08d}"


def save_checkpoint(ckpt_dir: str | Path, step: int, par: Parallelized,
                    optimizer: torch.optim.Optimizer, *, keep: int = 2) -> Path:
    """Write ``step-N`` atomically (collective: every rank calls it). Returns its path."""
    ckpt_dir = Path(ckpt_dir)
    final = checkpoint_path(ckpt_dir, step)
    tmp = ckpt_dir / f".tmp-{final.name}"
    if _rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    _barrier()
    state, _ = _state(par, optimizer)
    state["train"] = {"step": torch.tensor(step), "rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["train"]["cuda_rng"] = torch.cuda.get_rng_state()
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(tmp), no_dist=not _is_dist())
    _barrier()
    if _rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = ckpt_dir / "latest.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, ckpt_dir / "latest")
        done = sorted(p for p in ckpt_dir.glob(f"{PREFIX}*") if p.is_dir())
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir`` (``.tmp-*`` folders never count)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    done = sorted(p for p in ckpt_dir.glob(f"{PREFIX}*")
                  if p.is_dir() and (p / ".metadata").exists())
    return done[-1] if done else None


def load_checkpoint(path: str | Path, par: Parallelized,
                    optimizer: torch.optim.Optimizer) -> int:
    """Load model, optimizer and RNG from ``path`` in place; returns the step to resume at."""
    ensure_optimizer_state(optimizer)
    state, links = _state(par, optimizer)
    state["train"] = {"step": torch.tensor(0), "rng": torch.get_rng_state()}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path), no_dist=not _is_dist())
    with torch.no_grad():
        for name, target, view in links:
            _copy_back(par, name, target, view)
    torch.set_rng_state(state["train"]["rng"])
    return int(state["train"]["step"])
