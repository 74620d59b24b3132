"""Parallelism applied from outside the model: ParallelDims, TP-SP, FSDP2, parallelize."""

from .gradients import clip_grad_norm, clip_grad_norm_tensor, sync_gradients
from .parallel_dims import ParallelDims
from .parallelize import (
    Parallelized,
    SequenceParallelAttention,
    apply_activation_checkpointing,
    apply_fsdp,
    parallelize,
)
from .tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    TPPlan,
    apply_tensor_parallel,
    tp_plan,
)

__all__ = [
    "ColumnParallelLinear",
    "ParallelDims",
    "Parallelized",
    "RowParallelLinear",
    "SequenceParallelAttention",
    "TPPlan",
    "apply_activation_checkpointing",
    "apply_fsdp",
    "apply_tensor_parallel",
    "clip_grad_norm",
    "clip_grad_norm_tensor",
    "parallelize",
    "sync_gradients",
    "tp_plan",
]
