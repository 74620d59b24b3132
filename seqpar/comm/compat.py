"""Tensor collectives under the names each torch version prefers.

torch 2.13 renames ``all_gather_into_tensor``/``reduce_scatter_tensor`` to
``*_single`` (the old names warn); the GPU image has torch 2.11. Output tensors
are the inputs concatenated along dim 0.
"""

from __future__ import annotations

import torch.distributed as dist

all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
