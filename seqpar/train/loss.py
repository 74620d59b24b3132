"""The SP-exact loss: the single-device mean cross-entropy, computed on shards.

Each rank sums the token losses of the labels it holds (labels were shifted on
the global sequence before sharding, so none is lost at a shard border) and
counts them; ONE all-reduce of ``(sum, count, correct)`` over every rank that
holds part of the global batch (dp x sp x tp) gives the global totals, and the
loss is divided once. Averaging per-rank means instead would weight ranks with
few labelled tokens (padding, the synthetic task's answers) wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data import IGNORE_INDEX


@dataclass
class LossOutput:
    """``backward_loss`` is this rank's share ``local_sum / global_count`` (sum over
    ranks = the global mean). ``stats`` holds the global ``[sum, count, correct]``
    (float64, on the device): reading ``loss``/``accuracy``/``tokens`` syncs with the
    device, so the training step keeps ``stats`` and reads them once per logged step."""

    backward_loss: torch.Tensor
    stats: torch.Tensor

    @property
    def loss(self) -> float:
        total, count, _ = self.stats.tolist()
        return total / max(count, 1.0)

    @property
    def accuracy(self) -> float:
        _, count, correct = self.stats.tolist()
        return correct / max(count, 1.0)

    @property
    def tokens(self) -> int:
        return int(self.stats[1].item())


def sp_exact_loss(logits: torch.Tensor, labels: torch.Tensor, group=None, *,
                  ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """Mean cross-entropy over all labelled tokens of the global batch (no host sync).

    ``logits (B, L_local, V)``, ``labels (B, L_local)``; ``group`` is every rank
    holding part of the batch (``None``: the default group, or one process).
    """
    # (B, L, V) -> (B*L, V); fp32 for the softmax whatever the compute dtype
    flat = logits.reshape(-1, logits.shape[-1]).float()
    target = labels.reshape(-1)
    local_sum = F.cross_entropy(flat, target, ignore_index=ignore_index, reduction="sum")
    with torch.no_grad():
        mask = target != ignore_index
        correct = ((flat.argmax(-1) == target) & mask).sum()
        # (3,) float64: exact counts, and sums that do not lose digits across ranks
        stats = torch.stack([local_sum.detach().double(), mask.sum().double(), correct.double()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats, group=group)
    denom = stats[1].clamp(min=1.0).to(local_sum.dtype)
    return LossOutput(backward_loss=local_sum / denom, stats=stats)
