"""Apply parallelism to a plain model from outside, in a fixed order.

``parallelize(model, dims, mesh)``:

1. Megatron tensor parallelism with sequence parallelism over ``mesh["tp"]``;
2. the sequence-parallel attention strategy over ``mesh["sp"]`` (injected);
3. optional activation checkpointing of every block;
4. FSDP2 ``fully_shard`` over the flattened ``dp x sp`` mesh (ZeRO-3), or
   replicated parameters whose gradients :meth:`Parallelized.sync_gradients`
   all-reduces (DDP-style, bucketed).

Gradient semantics: the loss each rank backpropagates is its *share* of the
global mean (``local_sum / global_count``), so every reduction here is a plain
SUM. Parameters sharded by TP saw every token of their sp shard (through the
TP all-gather) and are summed over ``dp x sp``; all other parameters (norms,
embeddings, head) saw ``1/tp`` of those tokens and are summed over the whole
world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..attention import attention as sp_attention
from ..comm.groups import group_rank_size
from .parallel_dims import ParallelDims
from .tensor_parallel import apply_tensor_parallel, tp_shard_dim


class SequenceParallelAttention:
    """``attn(q, k, v, causal, documents=None)`` running ``seqpar.attention`` over the sp
    group.

    The cross-rank input check (one small all-gather) runs once per distinct
    problem shape, not on every layer of every step. ``documents`` (packed data:
    one tensor of global document boundaries per local sequence) arrive with
    each call from the model's forward, never as state set on this object;
    sequences are then attended one at a time, since each has its own boundaries.
    """

    def __init__(self, strategy: str, group, layout: str):
        self.strategy, self.group, self.layout = strategy, group, layout
        self._checked: set[tuple] = set()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                 documents: list[torch.Tensor] | None = None) -> torch.Tensor:
        key = (tuple(q.shape), tuple(k.shape), q.dtype, causal, documents is None)
        check = key not in self._checked
        self._checked.add(key)
        kw = dict(strategy=self.strategy, group=self.group, causal=causal, layout=self.layout,
                  check=check)
        if documents is None:
            return sp_attention(q, k, v, **kw)
        if len(documents) != q.shape[0]:
            raise ValueError(f"documents has {len(documents)} entries for a batch of "
                             f"{q.shape[0]}")
        # (B, H, Ls, D) -> B x (1, H, Ls, D), each with its own documents -> (B, H, Ls, D)
        return torch.cat([sp_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], cu_seqlens=cu,
                                       **kw) for i, cu in enumerate(documents)])


@dataclass
class Parallelized:
    """A parallelized model and what the training loop needs to drive it."""

    model: nn.Module
    dims: ParallelDims
    mesh: object | None = None
    fsdp: bool = False
    tp_sharded: set[str] = field(default_factory=set)

    def group(self, name: str) -> dist.ProcessGroup | None:
        """Process group of a mesh dim (``"dp"``, ``"sp"``, ``"tp"``, ``"dp_sp"``) or the
        world (``"world"``); ``None`` without torch.distributed."""
        if self.mesh is None:
            return None
        if name == "world":
            return dist.group.WORLD
        return self.submesh(name).get_group()

    def submesh(self, name: str):
        """A 1-D mesh by dim name. Flattened dims (``dp_sp``; ``sp`` of ``hybrid``) come
        from ``_flatten``, which returns the mesh ``ParallelDims.build_mesh`` made."""
        hybrid = self.dims.strategy == "hybrid"
        if name == "dp_sp":
            return self.mesh[("dp", "ring", "ulysses") if hybrid else ("dp", "sp")]._flatten(
                "dp_sp")
        if name == "sp" and hybrid:
            return self.mesh["ring", "ulysses"]._flatten("sp")
        return self.mesh[name]

    @property
    def _dp_sp(self):
        return self.submesh("dp_sp")

    @property
    def sp_mesh(self):
        """What attention and data sharding take as ``group``: the 2-D
        ``("ring", "ulysses")`` mesh for ``hybrid``, else the sp process group."""
        if self.mesh is not None and self.dims.strategy == "hybrid":
            return self.mesh["ring", "ulysses"]
        return self.group("sp")

    def local_rank(self, name: str) -> int:
        """This rank's coordinate along a mesh dim (0 without torch.distributed)."""
        return 0 if self.mesh is None else self.mesh.get_local_rank(name)

    def _split_params(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        tp_params, rep_params = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (tp_params if name in self.tp_sharded else rep_params).append(p)
        return tp_params, rep_params

    def full_tensor(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The dense value of parameter ``name``'s tensor ``t`` (its data, grad or optimizer
        state), gathered over FSDP and TP shards. Collective: every rank calls it."""
        from torch.distributed.tensor import DTensor, Shard

        if isinstance(t, DTensor):
            t = t.full_tensor()  # FSDP: dp x sp shards -> the (tp-local) tensor
        if name in self.tp_sharded and self.dims.tp > 1:
            # tp-local slice -> dense weight, along the dim the column/row split cut
            t = DTensor.from_local(t, self.mesh["tp"], [Shard(tp_shard_dim(name))],
                                   run_check=False).full_tensor()
        return t.detach().clone()  # a copy, never an alias of live state (1-rank meshes)

    @torch.no_grad()
    def full_gradients(self) -> dict[str, torch.Tensor]:
        """Every parameter's gradient at its dense shape, by name (tests, debugging)."""
        return {name: self.full_tensor(name, p.grad) for name, p in
                self.model.named_parameters() if p.grad is not None}

    @torch.no_grad()
    def sync_gradients(self) -> None:
        """Sum gradients where the autograd graph left them partial (see module doc)."""
        if self.mesh is None:
            return
        tp_params, rep_params = self._split_params()
        if self.fsdp:  # FSDP summed over dp x sp already; replicated params need tp too
            if self.dims.tp > 1:
                _all_reduce_grads([_local(p.grad) for p in rep_params], self.group("tp"))
            return
        if self.dims.dp * self.dims.sp > 1:
            _all_reduce_grads([p.grad for p in tp_params], self.group("dp_sp"))
        if dist.get_world_size() > 1:
            _all_reduce_grads([p.grad for p in rep_params], self.group("world"))

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """Global L2 norm of all gradients (each element counted once); scale to ``max_norm``."""
        tp_params, rep_params = self._split_params()
        device = next(self.model.parameters()).device
        sq = torch.zeros(2, dtype=torch.float64, device=device)
        for i, params in enumerate((tp_params, rep_params)):
            for p in params:
                if p.grad is not None:
                    sq[i] += _local(p.grad).double().pow(2).sum()
        if self.mesh is not None:
            if self.fsdp and self.dims.dp * self.dims.sp > 1:
                dist.all_reduce(sq, group=self.group("dp_sp"))  # FSDP shards -> full params
            if self.dims.tp > 1:
                tp_sq = sq[0].clone()
                dist.all_reduce(tp_sq, group=self.group("tp"))  # tp shards -> full weights
                sq[0] = tp_sq
        norm = math.sqrt(sq.sum().item())
        if max_norm > 0 and norm > max_norm:
            coef = max_norm / (norm + 1e-6)
            for p in tp_params + rep_params:
                if p.grad is not None:
                    _local(p.grad).mul_(coef)
        return norm


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _all_reduce_grads(grads: list[torch.Tensor | None], group, bucket_numel: int = 2**25) -> None:
    """SUM-all-reduce gradients in flat buckets (one collective per ~128 MB of fp32)."""
    grads = [g for g in grads if g is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads + [None]:
        if g is not None:
            bucket.append(g)
            size += g.numel()
        if bucket and (g is None or size >= bucket_numel):
            flat = torch.cat([b.reshape(-1) for b in bucket])  # n x (numel_i,) -> (Σ numel_i,)
            dist.all_reduce(flat, group=group)
            for b, chunk in zip(bucket, flat.split([b.numel() for b in bucket])):
                b.copy_(chunk.view_as(b))
            bucket, size = [], 0


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every block in backward (non-reentrant); parameter names are unchanged."""
    for block in model.layers:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def apply_fsdp(model: nn.Module, mesh, param_dtype: torch.dtype | None = None) -> None:
    """FSDP2 (ZeRO-3) over a 1-D mesh: one unit per block plus the root.

    Gradients are SUMmed (divide factor 1: the loss is already normalized by
    the global token count) with sum-only collectives, which gloo needs too.
    ``param_dtype`` (e.g. bf16): parameters are all-gathered and used in that
    dtype, gradients reduced in fp32, the sharded master copy stays fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) \
        if param_dtype not in (None, torch.float32) else MixedPrecisionPolicy()
    units = list(model.layers) + [model]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)


def parallelize(model: nn.Module, dims: ParallelDims, mesh=None, *, fsdp: bool = False,
                activation_checkpointing: bool = False,
                param_dtype: torch.dtype | None = None) -> Parallelized:
    """Apply TP-SP, sequence-parallel attention, checkpointing and FSDP2/replication.

    ``mesh`` is ``dims.build_mesh(...)`` (or ``None`` for one process without
    torch.distributed). The model is changed in place and returned inside a
    :class:`Parallelized` handle. ``param_dtype`` is FSDP2's compute dtype for
    parameters (mixed precision); replicated parameters use autocast instead.
    """
    cfg = getattr(model, "cfg", None)
    dims.validate(None if mesh is None else mesh.size(), model=cfg)
    if mesh is None and dims.world_size != 1:
        raise ValueError(f"parallelize: {dims.describe()} needs a DeviceMesh of "
                         f"{dims.world_size} ranks, got mesh=None")
    par = Parallelized(model=model, dims=dims, mesh=mesh, fsdp=fsdp and mesh is not None)
    # 1. Megatron TP with sequence parallelism
    if dims.tp > 1:
        par.tp_sharded = apply_tensor_parallel(model, par.group("tp"))
    # 2. attention over the sp group
    if mesh is not None and group_rank_size(par.group("sp"))[1] != dims.sp:
        raise ValueError(f"mesh sp size {group_rank_size(par.group('sp'))[1]} != sp={dims.sp}")
    model.set_attention(SequenceParallelAttention(dims.strategy, par.sp_mesh, dims.layout))
    # 3. activation checkpointing
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    # 4. FSDP2 over dp x sp (replicated params need no wrapping: see sync_gradients)
    if par.fsdp:
        apply_fsdp(model, par._dp_sp, param_dtype)
    return par
