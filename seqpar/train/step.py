"""One optimizer step: forward, SP-exact loss, backward, gradient sync, clip, update.

``train_step`` is the unit a schedule repeats. It takes an already sharded
:class:`~seqpar.data.LocalBatch` and returns plain numbers (global values,
identical on every rank); everything around it (data, logging, checkpoints,
stopping) lives in the loop. Gradient accumulation or a pipeline schedule
replaces the single forward/backward inside it and keeps the rest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from ..data import LocalBatch
from ..parallel import Parallelized, clip_grad_norm_tensor, sync_gradients
from .config import TrainConfig
from .loss import LossOutput, sp_exact_loss

#: profiler range around clipping + the optimizer step (seqpar.train.step_profile)
OPTIMIZER_RANGE = "seqpar::optimizer"

#: ``on_gradients(step, par)``: sees the summed gradients before clipping (tests).
GradientHook = Callable[[int, Parallelized], None]


@dataclass
class StepOutput:
    """Global loss/accuracy over the labelled tokens of the step, the gradient norm
    before clipping and the learning rate used.

    From :func:`train_step` the first four are 0-d device tensors (no host sync in the
    step); :meth:`resolved` turns them into numbers with one sync, which the progress
    does once per logged step for all the steps since the last one."""

    loss: float | torch.Tensor
    accuracy: float | torch.Tensor
    tokens: int | torch.Tensor
    grad_norm: float | torch.Tensor
    lr: float

    def resolved(self) -> StepOutput:
        """Plain numbers (one host sync when any value is a tensor)."""
        values = [self.loss, self.accuracy, self.tokens, self.grad_norm]
        if not any(isinstance(v, torch.Tensor) for v in values):
            return self
        return resolve_all([self])[0]


def resolve_all(outs: list[StepOutput]) -> list[StepOutput]:
    """Every output's numbers with ONE host sync (a stack of all their tensors)."""
    flat = [torch.as_tensor(v, dtype=torch.float64).reshape(()).to("cpu")
            if not isinstance(v, torch.Tensor) else v.detach().double().reshape(())
            for o in outs for v in (o.loss, o.accuracy, o.tokens, o.grad_norm)]
    if not flat:
        return []
    devices = {t.device for t in flat}
    dev = next((d for d in devices if d.type != "cpu"), flat[0].device)
    values = torch.stack([t.to(dev) for t in flat]).tolist()
    return [StepOutput(loss=values[4 * i], accuracy=values[4 * i + 1],
                       tokens=int(values[4 * i + 2]), grad_norm=values[4 * i + 3], lr=o.lr)
            for i, o in enumerate(outs)]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine down to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(
        math.pi * progress)))


def make_optimizer(par: Parallelized, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the (possibly sharded) parameters; the LR is set by each step.

    On CUDA the fused kernel (``fused=True``: one launch per parameter group instead of
    a chain of foreach passes); on CPU, or with parameters in host memory (optimizer
    offload), the default. ``SEQPAR_FUSED_ADAMW=0`` turns it off (to measure it)."""
    params = list(par.model.parameters())
    fused = bool(params) and all(p.device.type == "cuda" for p in params) and \
        os.environ.get("SEQPAR_FUSED_ADAMW", "1") != "0"
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
                             weight_decay=cfg.weight_decay, **({"fused": True} if fused else {}))


def autocast_for(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (nothing for float32)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def chunked_head_loss(labels: torch.Tensor, group, chunk: int
                      ) -> Callable[[torch.Tensor, torch.Tensor], LossOutput]:
    """The model's ``head_loss``: the SP-exact loss of ``hidden @ head_weight^T``,
    ``chunk`` tokens at a time (the process group stays out of the model)."""
    from ..memory.chunked_loss import chunked_sp_exact_loss

    def head_loss(hidden: torch.Tensor, weight: torch.Tensor) -> LossOutput:
        return chunked_sp_exact_loss(hidden, weight, labels, group, chunk)

    return head_loss


def train_step(par: Parallelized, optimizer: torch.optim.Optimizer, batch: LocalBatch, *,
               step: int, lr: float, grad_clip: float,
               autocast: AbstractContextManager | None = None,
               on_gradients: GradientHook | None = None, loss_chunk: int = 0) -> StepOutput:
    """Run step ``step`` (0-based) on this rank's ``batch``; collective over every rank.

    ``loss_chunk > 0``: the head and the loss run fused, ``loss_chunk`` tokens at a
    time, inside the model's forward (:func:`chunked_head_loss`): no full logits."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast if autocast is not None else nullcontext():
        if loss_chunk:
            out = par.model(batch.tokens, batch.position_ids, documents=batch.cu_seqlens,
                            head_loss=chunked_head_loss(batch.labels, par.group("world"),
                                                        loss_chunk))
        else:
            logits = par.model(batch.tokens, batch.position_ids, documents=batch.cu_seqlens)
            out = sp_exact_loss(logits, batch.labels, par.group("world"))
    out.backward_loss.backward()
    sync_gradients(par)
    if on_gradients is not None:
        on_gradients(step, par)
    with torch.profiler.record_function(OPTIMIZER_RANGE):  # --profile-step classifies by it
        grad_norm = clip_grad_norm_tensor(par, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    # global [sum, count, correct] -> loss, accuracy, tokens, all still on the device
    total, count, correct = out.stats.unbind()
    denom = count.clamp(min=1.0)
    return StepOutput(loss=total / denom, accuracy=correct / denom, tokens=count,
                      grad_norm=grad_norm, lr=lr)
