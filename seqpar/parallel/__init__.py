"""Parallelism applied from outside the model: ParallelDims, TP-SP, FSDP2, parallelize."""

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
    apply_tensor_parallel,
    tp_shard_dim,
)

__all__ = [
    "ColumnParallelLinear",
    "ParallelDims",
    "Parallelized",
    "RowParallelLinear",
    "SequenceParallelAttention",
    "apply_activation_checkpointing",
    "apply_fsdp",
    "apply_tensor_parallel",
    "parallelize",
    "tp_shard_dim",
]
