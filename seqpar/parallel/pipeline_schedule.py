"""``torch.distributed.pipelining`` stages and schedules for the stage modules, the
SP-exact loss per microbatch, and the measured pipeline bubble.

Shapes are given to every :class:`PipelineStage` up front (``input_args`` /
``output_args``: meta tensors of one microbatch), so no stage infers shapes by
running its neighbours' forward or exchanging metadata.

Exact loss with microbatches: the global count of labelled tokens of the whole
step is known before the first microbatch runs (one all-reduce of the local
counts over the stage's dp x sp x tp ranks). Each microbatch's loss is its local
label-loss sum over that count, so the sum over microbatches and ranks is the
one-process mean, and gradients are summed, never rescaled (``scale_grads=False``).

Chunked head + loss (``loss_chunk``): the last stage's forward itself runs
:func:`~seqpar.memory.chunked_loss.linear_cross_entropy` on the final-norm hidden
state and its ``labels`` (a schedule kwarg, microbatched like the tokens) and
outputs ``(3,)`` float64 ``[local label-loss sum (differentiable), the same sum,
correct]`` instead of ``(mb, L, V)`` logits. The head weight is thus used inside the
stage's forward (the full weight under FSDP2; its gradient, computed in forward by
the fused function, reaches ``.grad`` when the schedule backpropagates
``loss_fn``'s output through the stage); the loss function only divides by the
global count, as for logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import IGNORE_INDEX


class MicrobatchLoss:
    """The schedule's ``loss_fn(logits, labels)``: ``local_sum / global_count``.

    ``chunked``: the last stage outputs :func:`chunked_head_stats`'s ``(3,)`` row
    instead of logits (module doc).

    :meth:`begin` sets the step's global label count and clears the sums; after
    the step ``stats`` holds this rank's ``(label-loss sum, labelled, correct)``.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, chunked: bool = False):
        self.ignore_index = ignore_index
        self.chunked = chunked
        self.count = 1.0
        self.stats = torch.zeros(3, dtype=torch.float64)

    def begin(self, global_count: float, device: torch.device) -> None:
        self.count = max(float(global_count), 1.0)
        self.stats = torch.zeros(3, dtype=torch.float64, device=device)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.chunked:
            return self._from_stats(logits, labels)
        # (B, L, V) -> (B*L, V); fp32 for the softmax whatever the compute dtype
        flat = logits.reshape(-1, logits.shape[-1]).float()
        target = labels.reshape(-1)
        local_sum = F.cross_entropy(flat, target, ignore_index=self.ignore_index,
                                    reduction="sum")
        with torch.no_grad():
            mask = target != self.ignore_index
            correct = ((flat.argmax(-1) == target) & mask).sum()
            self.stats += torch.stack([local_sum.detach().double(), mask.sum().double(),
                                       correct.double()])
        return local_sum / self.count

    def _from_stats(self, row: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # row (3,) float64: [differentiable local sum, the same sum, correct]
        with torch.no_grad():
            labelled = (labels != self.ignore_index).sum().double()
            self.stats += torch.stack([row[1].detach(), labelled, row[2].detach()])
        return row[0] / self.count


def chunked_head_stats(chunk: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                               torch.Tensor]:
    """The last stage's ``head_loss``: ``hidden (mb, L, d)``, ``weight (V, d)``,
    ``labels (mb, L)`` -> ``(3,)`` float64 ``[sum (differentiable), sum, correct]``
    through the fused chunked head + cross-entropy (no ``(mb*L, V)`` logits)."""
    from ..memory.chunked_loss import linear_cross_entropy

    def head_loss(hidden: torch.Tensor, weight: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])  # (mb, L, d) -> (mb*L, d)
        # scale 1: the loss function divides by the step's global label count
        loss, stats = linear_cross_entropy(flat, weight, labels.reshape(-1), chunk=chunk)
        return torch.cat([loss.double().reshape(1), stats])  # (3,)

    return head_loss


class BusyTimer:
    """Wall time a rank spends computing stage forwards and backwards in a step.

    Wraps the stage objects' ``forward_one_chunk`` / ``backward_one_chunk`` /
    ``backward_weight_one_chunk`` (CUDA is synchronised around each, so kernel time
    is counted where it runs). The rest of the step is waiting on neighbours or
    scheduling: ``1 - busy / step`` is the measured bubble.
    """

    METHODS = ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk")

    def __init__(self, stages: list, device: torch.device):
        self.busy = 0.0
        self.device = device
        for stage in stages:
            for name in self.METHODS:
                if hasattr(stage, name):
                    setattr(stage, name, self._timed(getattr(stage, name)))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            self._sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.busy += time.perf_counter() - t0

        return run


def _meta(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A shape/dtype declaration; floating ones require grad (their gradients travel
    back to the previous stage: the stage derives the gradient shapes from these)."""
    return torch.empty(shape, dtype=dtype, device="meta",
                       requires_grad=dtype.is_floating_point)


def make_stage(module: nn.Module, stage: int, n_stages: int, device: torch.device, group, *,
               microbatch: int, local_len: int, dim: int, vocab: int,
               act_dtype: torch.dtype, logits_dtype: torch.dtype, head_stats: bool = False):
    """A :class:`PipelineStage` with its microbatch input/output shapes declared
    (``act_dtype``: the hidden state between stages; ``logits_dtype``: the head's;
    ``head_stats``: the last stage outputs :func:`chunked_head_stats`'s ``(3,)`` row)."""
    from torch.distributed.pipelining import PipelineStage

    first, last = stage == 0, stage == n_stages - 1
    # tokens (mb, L) on the first stage, else the hidden state (mb, L, dim)
    inputs = (_meta((microbatch, local_len), torch.long) if first
              else _meta((microbatch, local_len, dim), act_dtype))
    # logits (mb, L, V) on the last stage, else the hidden state (mb, L, dim)
    outputs = (_meta((microbatch, local_len, vocab), logits_dtype) if last
               else _meta((microbatch, local_len, dim), act_dtype))
    if last and head_stats:  # the chunked head + loss: (3,) float64, no logits
        outputs = _meta((3,), torch.float64)
    return PipelineStage(module, stage, n_stages, device, input_args=(inputs,),
                         output_args=(outputs,), group=group)


def make_schedule(kind: str, stages: list, microbatches: int, loss_fn: MicrobatchLoss):
    """GPipe / 1F1B over this rank's single stage, or interleaved 1F1B over several."""
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    if kind == "interleaved":
        return ScheduleInterleaved1F1B(stages, n_microbatches=microbatches, loss_fn=loss_fn,
                                       scale_grads=False)
    if len(stages) != 1:
        raise ValueError(f"pp_schedule={kind!r} runs one stage per rank, got {len(stages)}")
    cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[kind]
    return cls(stages[0], n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=False)
