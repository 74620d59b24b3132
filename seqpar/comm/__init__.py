"""Communication layer: differentiable collectives, ring P2P, byte accounting."""

from .all_reduce import AllReduceSum, all_reduce_sum
from .collectives import (
    AllGatherSeq,
    HeadsToSeq,
    ReduceScatterSeq,
    SeqToHeads,
    all_gather_seq,
    heads_to_seq,
    reduce_scatter_seq,
    seq_to_heads,
)
from .groups import (
    DEFAULT_TIMEOUT,
    collective_device,
    group_rank_size,
    hybrid_groups,
    hybrid_mesh,
    hybrid_slices,
    is_hybrid_mesh,
    resolve_group,
    seq_rank_size,
)
from .ring import RingExchange
from .stats import CommCounter, count_bytes, record

__all__ = [
    "AllReduceSum",
    "all_reduce_sum",
    "AllGatherSeq",
    "CommCounter",
    "DEFAULT_TIMEOUT",
    "HeadsToSeq",
    "ReduceScatterSeq",
    "RingExchange",
    "SeqToHeads",
    "all_gather_seq",
    "collective_device",
    "count_bytes",
    "group_rank_size",
    "heads_to_seq",
    "hybrid_groups",
    "hybrid_mesh",
    "hybrid_slices",
    "is_hybrid_mesh",
    "record",
    "reduce_scatter_seq",
    "resolve_group",
    "seq_rank_size",
    "seq_to_heads",
]
