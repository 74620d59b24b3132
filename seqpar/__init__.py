"""seqpar: sequence parallelism for long-context transformer training.

``seqpar.attention`` is exact attention over a sequence split across a process
group (strategies ``rsa``, ``ring``, ``ulysses``, ``allgather``, ``hybrid``);
``seqpar.shard``/``unshard`` move whole tensors into and out of a layout.
"""

from . import comm, kernels
from .attention import STRATEGIES, attention, work_per_rank
from .comm import hybrid_mesh
from .layout import (
    LAYOUT_NAMES,
    Contiguous,
    DocStriped,
    DocZigzag,
    Layout,
    Striped,
    Zigzag,
    position_ids,
    shard,
    unshard,
)
from .padding import IGNORE_INDEX, pad_cu_seqlens, pad_for_layout, padded_length

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "pad_cu_seqlens",
    "pad_for_layout",
    "padded_length",
    "LAYOUT_NAMES",
    "STRATEGIES",
    "Contiguous",
    "DocStriped",
    "DocZigzag",
    "Layout",
    "Striped",
    "Zigzag",
    "attention",
    "comm",
    "hybrid_mesh",
    "kernels",
    "position_ids",
    "shard",
    "unshard",
    "work_per_rank",
]
