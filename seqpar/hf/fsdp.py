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


def fully_shard_model(model: nn.Module, mesh, *, param_dtype: torch.dtype | None = None,
                      offload_optimizer: bool = False) -> nn.Module:
    """``fully_shard`` each decoder layer and the root over a 1-D ``mesh`` (the dp x sp
    ranks). ``param_dtype`` (e.g. bf16) computes in that dtype with fp32 gradient
    reduction and an fp32 sharded master copy. ``offload_optimizer``: FSDP2's
    ``CPUOffloadPolicy`` (sharded parameters, gradients and so the AdamW state in host
    memory; a meta-device model is then ``to_empty``'d on the CPU, buffers on the
    device: :func:`materialize`). Returns ``model``."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) \
        if param_dtype not in (None, torch.float32) else MixedPrecisionPolicy()
    units = list(decoder_layers(model)) + [model]
    extra = {}
    if offload_optimizer:
        # pinned host memory needs an accelerator; on a CPU mesh it is plain memory
        extra["offload_policy"] = CPUOffloadPolicy(pin_memory=mesh.device_type != "cpu")
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp, **extra)
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return model


def materialize(model: nn.Module, device: torch.device, *, offload_optimizer: bool = False
                ) -> nn.Module:
    """``to_empty`` a meta-device model: on ``device``, or with ``offload_optimizer``
    the (FSDP2-offloaded) parameters on the host and the buffers (rotary tables) on
    ``device``. Values are garbage until :func:`seqpar.hf.load_weights`."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and head.weight is embed.weight
    if not offload_optimizer or device.type == "cpu":
        model.to_empty(device=device)
    else:
        model.to_empty(device="cpu")
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.to(device)
    if tied and head.weight is not embed.weight:  # to_empty gave each module its own
        head.weight = embed.weight
    return model
