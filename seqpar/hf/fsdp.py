"""FSDP2 over a sequence-parallel HF model: one unit per decoder layer plus the root.

Sequence parallelism leaves each rank with a *partial* gradient (its tokens'
share of a loss already divided by the global token count), so gradients are
SUMmed over the mesh (divide factor 1), not averaged; the same rule as
``seqpar.parallel.parallelize.apply_fsdp`` for the native model.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import decoder_layers


def fully_shard_model(model: nn.Module, mesh, *, param_dtype: torch.dtype | None = None
                      ) -> nn.Module:
    """``fully_shard`` each decoder layer and the root over a 1-D ``mesh`` (the dp x sp
    ranks). ``param_dtype`` (e.g. bf16) computes in that dtype with fp32 gradient
    reduction and an fp32 sharded master copy. Returns ``model``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) \
        if param_dtype not in (None, torch.float32) else MixedPrecisionPolicy()
    units = list(decoder_layers(model)) + [model]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return model
