"""The SP-exact loss over a sharded HF model's logits.

``seqpar.train.loss.sp_exact_loss`` does the work: each rank backpropagates
``local_sum / global_count``, so the gradients summed over ranks (what FSDP with
divide factor 1, or an all-reduce SUM, does) equal the single-process mean loss's.
The group must cover every rank holding part of the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..comm import is_hybrid_mesh
from ..train.loss import LossOutput, sp_exact_loss


def loss(logits: torch.Tensor, shifted_labels: torch.Tensor, group=None) -> LossOutput:
    """Mean next-token cross-entropy of the global batch from this rank's shard.

    ``logits (B, Ls, V)`` from the model, ``shifted_labels (B, Ls)`` from
    :func:`seqpar.hf.shard_batch`. ``group``: ProcessGroup, 1-D DeviceMesh, None
    (default group) or a hybrid mesh spanning the default group. Call
    ``out.backward_loss.backward()``; ``out.loss`` is the global mean (a float).
    """
    if logits.shape[:2] != shifted_labels.shape:
        raise ValueError(f"logits (B, Ls, V) = {tuple(logits.shape)} do not match labels "
                         f"(B, Ls) = {tuple(shifted_labels.shape)}")
    return sp_exact_loss(logits, shifted_labels, _process_group(group))


def _process_group(group):
    """One process group over every rank of ``group`` (hybrid meshes: the default group)."""
    if is_hybrid_mesh(group):
        world = dist.get_world_size()
        if group.size() != world:
            raise ValueError(f"a hybrid mesh of {group.size()} ranks inside a world of {world}: "
                             "pass the process group covering the global batch as group=")
        return None
    get_group = getattr(group, "get_group", None)
    return get_group() if get_group is not None else group
