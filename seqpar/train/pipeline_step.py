"""One optimizer step through the pipeline schedule (``pp > 1``).

The counterpart of :func:`~seqpar.train.step.train_step`: the schedule replaces
the single forward/backward, the rest (gradient sync, clip, update) stays, plus
the pipeline's own bookkeeping: the tied embedding's gradient summed over its
first- and last-stage copies, the clipping norm summed over stages, the global
loss brought from the last stage to every rank, and the measured bubble.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..data import IGNORE_INDEX, LocalBatch
from ..parallel import sync_gradients
from ..parallel.pipeline import (
    PipelineParallelized,
    pipeline_clip_grad_norm,
    sync_tied_embedding,
)
from ..parallel.pipeline_stages import pad_documents
from .step import GradientHook, StepOutput


@dataclass
class PipelineStepOutput(StepOutput):
    """A step's values plus the measured pipeline bubble (idle fraction per pp rank)."""

    bubble_per_stage: list[float] = field(default_factory=list)

    @property
    def bubble(self) -> float:
        return sum(self.bubble_per_stage) / max(len(self.bubble_per_stage), 1)

    @property
    def metrics(self) -> dict:
        """Extra metrics-file columns."""
        return {"bubble": self.bubble, "bubble_per_stage": self.bubble_per_stage}


def pipeline_train_step(par: PipelineParallelized, optimizer: torch.optim.Optimizer,
                        batch: LocalBatch, *, step: int, lr: float, grad_clip: float,
                        autocast: AbstractContextManager | None = None,
                        on_gradients: GradientHook | None = None,
                        loss_chunk: int = 0) -> PipelineStepOutput:
    """Run step ``step`` on this rank's ``batch`` through the schedule; collective.

    ``loss_chunk``: as given to :func:`~seqpar.parallel.pipeline.parallelize_pipeline`
    (the labels then travel to the last stage's forward)."""
    if bool(loss_chunk) != par.loss_fn.chunked:
        raise ValueError(f"loss_chunk={loss_chunk} differs from the pipeline's "
                         f"(built {'with' if par.loss_fn.chunked else 'without'} loss_chunk)")
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = batch.tokens.device
    # the global label count, known before the first microbatch: every pp rank of this
    # dp/sp/tp coordinate holds the same labels, so the stage's group counts them all
    count = (batch.labels != IGNORE_INDEX).sum().double()
    dist.all_reduce(count, group=par.group("world"))
    par.loss_fn.begin(float(count), device)
    b = batch.tokens.shape[0]
    kwargs = {"position_ids": batch.position_ids.expand(b, -1)}  # (L,) -> (B, L) per row
    documents = pad_documents(batch.cu_seqlens)
    if documents is not None:
        kwargs["documents"] = documents.to(device)
    if loss_chunk:  # the chunked head + loss runs in the last stage's forward
        kwargs["labels"] = batch.labels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    par.timer.busy, t0 = 0.0, time.perf_counter()
    with autocast if autocast is not None else nullcontext():
        par.schedule.step(batch.tokens, target=batch.labels, return_outputs=False, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # idle fraction of this rank while the schedule ran: waiting on its neighbours
    idle = torch.tensor([1.0 - par.timer.busy / max(time.perf_counter() - t0, 1e-9)],
                        dtype=torch.float64, device=device)
    # (sum, labelled, correct) live on the last stage: summing over the world gives
    # the global values everywhere (other stages add zeros)
    stats = par.loss_fn.stats.clone() if par.is_last else torch.zeros(
        3, dtype=torch.float64, device=device)
    dist.all_reduce(stats)
    sync_gradients(par)
    sync_tied_embedding(par)
    if on_gradients is not None:
        on_gradients(step, par)
    grad_norm = pipeline_clip_grad_norm(par, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    bubbles = [torch.zeros_like(idle) for _ in range(par.dims.pp)]
    dist.all_gather(bubbles, idle, group=par.group("pp"))
    # one host sync: (sum, labelled, correct, grad norm, pp bubbles)
    numbers = torch.cat([stats, grad_norm.reshape(1).double(), *bubbles]).tolist()
    total, labelled, correct, norm = numbers[:4]
    denom = max(labelled, 1.0)
    return PipelineStepOutput(loss=total / denom, accuracy=correct / denom,
                              tokens=int(labelled), grad_norm=norm, lr=lr,
                              bubble_per_stage=numbers[4:])
