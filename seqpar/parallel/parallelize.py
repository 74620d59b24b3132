"""Apply parallelism to a plain model from outside, in a fixed order.

``parallelize(model, dims, mesh)``:

1. Megatron tensor parallelism with sequence parallelism over ``mesh["tp"]``;
2. the sequence-parallel attention strategy over ``mesh["sp"]`` (injected);
3. optional activation checkpointing of every block;
4. FSDP2 ``fully_shard`` over the flattened ``dp x sp`` mesh (ZeRO-3), or
   replicated parameters whose gradients
   :func:`seqpar.parallel.gradients.sync_gradients` all-reduces (DDP-style,
   bucketed).

The handle records the tp plan (parameter -> split dim) that step 1 declared
from the layer types; gradient sync, clipping (``gradients.py``) and
checkpoints read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..attention import attention as sp_attention
from ..comm.groups import group_rank_size
from ..memory.checkpointing import recompute_contexts
from .parallel_dims import ParallelDims
from .tensor_parallel import TPPlan, apply_tensor_parallel


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
    #: parameter name -> split dim of the dense weight, for every tp shard (from the types)
    tp_plan: TPPlan = field(default_factory=dict)
    #: the ActivationOffload of offloaded layers (its ``stats``), else None
    activation_offload: object | None = None
    #: parameter name -> SeqShard for parameters split along the sequence over sp
    #: (Linformer's E/F, seqpar.parallel.linformer); FSDP ignores them
    seq_sharded: dict = field(default_factory=dict)

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

    def full_tensor(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The dense value of parameter ``name``'s tensor ``t`` (its data, grad or optimizer
        state), gathered over FSDP and TP shards. Collective: every rank calls it."""
        from torch.distributed.tensor import DTensor, Shard

        if name in self.seq_sharded:  # (k, L_local) columns -> (k, L)
            from .linformer import gather_full
            return gather_full(self.seq_sharded[name], t)
        if isinstance(t, DTensor):
            t = t.full_tensor()  # FSDP: dp x sp shards -> the (tp-local) tensor
        if name in self.tp_plan and self.dims.tp > 1:
            # tp-local slice -> dense weight, along the dim the column/row split cut
            t = DTensor.from_local(t, self.mesh["tp"], [Shard(self.tp_plan[name])],
                                   run_check=False).full_tensor()
        return t.detach().clone()  # a copy, never an alias of live state (1-rank meshes)

    @torch.no_grad()
    def full_gradients(self) -> dict[str, torch.Tensor]:
        """Every parameter's gradient at its dense shape, by name (tests, debugging)."""
        return {name: self.full_tensor(name, p.grad) for name, p in
                self.model.named_parameters() if p.grad is not None}


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every block in backward (non-reentrant); parameter names are unchanged."""
    for block in model.layers:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False,
                              context_fn=recompute_contexts, **kwargs)

        block.forward = forward


def apply_fsdp(model: nn.Module, mesh, param_dtype: torch.dtype | None = None, *,
               offload_optimizer: bool = False,
               ignored_params: set[nn.Parameter] | None = None) -> None:
    """FSDP2 (ZeRO-3) over a 1-D mesh: one unit per block plus the root.

    Gradients are SUMmed (divide factor 1: the loss is already normalized by
    the global token count) with sum-only collectives, which gloo needs too.
    ``param_dtype`` (e.g. bf16): parameters are all-gathered and used in that
    dtype, gradients reduced in fp32, the sharded master copy stays fp32.
    ``offload_optimizer``: FSDP2's ``CPUOffloadPolicy`` (sharded parameters, gradients
    and so the optimizer state live in host memory; the step runs on the CPU).
    ``ignored_params``: parameters FSDP leaves alone (already split, e.g. Linformer's E/F).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) \
        if param_dtype not in (None, torch.float32) else MixedPrecisionPolicy()
    units = list(model.layers) + [model]
    for unit in units:
        if offload_optimizer:
            # pinned host memory needs an accelerator; on a CPU mesh it is plain memory
            pin = mesh.device_type != "cpu"
            fully_shard(unit, mesh=mesh, mp_policy=mp,
                        offload_policy=CPUOffloadPolicy(pin_memory=pin),
                        ignored_params=ignored_params)
        else:
            fully_shard(unit, mesh=mesh, mp_policy=mp, ignored_params=ignored_params)
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)


def parallelize(model: nn.Module, dims: ParallelDims, mesh=None, *, fsdp: bool = False,
                activation_checkpointing: bool | str = False,
                param_dtype: torch.dtype | None = None, mlp_chunk: int = 0,
                offload_layers: int | None = None,
                offload_optimizer: bool = False, compile: bool = False) -> Parallelized:
    """Apply TP-SP, sequence-parallel attention, checkpointing and FSDP2/replication.

    ``mesh`` is ``dims.build_mesh(...)`` (or ``None`` for one process without
    torch.distributed). The model is changed in place and returned inside a
    :class:`Parallelized` handle. ``param_dtype`` is FSDP2's compute dtype for
    parameters (mixed precision); replicated parameters use autocast instead.
    Memory options (docs/memory.md): ``activation_checkpointing`` True/"full",
    "selective", "offload" (the first ``offload_layers`` layers, default all) or
    False/"none"; ``mlp_chunk`` tokens per MLP tile (0: off; tp=1 only);
    ``offload_optimizer``: FSDP2 CPU offload. ``par.activation_offload`` holds the
    offload's statistics when a layer offloads. ``compile``: regional torch.compile
    per block, attention left eager (:mod:`seqpar.parallel.compile`; tp=1 only).
    """
    cfg = getattr(model, "cfg", None)
    dims.validate(None if mesh is None else mesh.size(), model=cfg)
    if getattr(cfg, "attention", "softmax") == "linformer":
        from .linformer import linformer_dims_problems
        if linformer_dims_problems(dims):
            raise ValueError("parallelize: " + "; ".join(linformer_dims_problems(dims)))
    if mesh is None and dims.world_size != 1:
        raise ValueError(f"parallelize: {dims.describe()} needs a DeviceMesh of "
                         f"{dims.world_size} ranks, got mesh=None")
    par = Parallelized(model=model, dims=dims, mesh=mesh, fsdp=fsdp and mesh is not None)
    # 1. Megatron TP with sequence parallelism
    if dims.tp > 1:
        par.tp_plan = apply_tensor_parallel(model, par.group("tp"))
    # 2. attention over the sp group
    if mesh is not None and group_rank_size(par.group("sp"))[1] != dims.sp:
        raise ValueError(f"mesh sp size {group_rank_size(par.group('sp'))[1]} != sp={dims.sp}")
    model.set_attention(SequenceParallelAttention(dims.strategy, par.sp_mesh, dims.layout))
    if getattr(cfg, "attention", "softmax") == "linformer":  # E/F split by the layout
        from .linformer import apply_linformer
        par.seq_sharded = apply_linformer(model, par.group("sp"), dims.layout)
    if compile:  # per block, before checkpointing wraps the block (seqpar.parallel.compile)
        from .compile import apply_compile
        apply_compile(model, tp=dims.tp)
    # 3. tiled MLP and activation checkpointing (before fully_shard)
    if mlp_chunk:
        if dims.tp > 1:
            raise ValueError(f"mlp chunk {mlp_chunk} needs tp=1 (got tp={dims.tp}): the "
                             f"TP MLP's sequence reduce-scatter cannot run per tile")
        from ..memory.norm import apply_lean_norm
        from ..memory.tiled_mlp import apply_tiled_mlp
        apply_tiled_mlp(model, mlp_chunk)
        apply_lean_norm(model)  # norms keep their input only (docs/memory.md)
    mode = {True: "full", False: "none"}.get(activation_checkpointing, activation_checkpointing)
    if mode == "full" and offload_layers is None:
        apply_activation_checkpointing(model)
    elif mode != "none" or offload_layers:
        from ..memory.checkpointing import apply_activation_checkpointing as apply_modes
        par.activation_offload = apply_modes(model, mode, offload_layers=offload_layers)
    if offload_optimizer and not par.fsdp:
        raise ValueError("offload optimizer needs FSDP2 over more than one rank "
                         "(--fsdp and a process group)")
    # 4. FSDP2 over dp x sp (replicated params need no wrapping: gradients.sync_gradients)
    if par.fsdp:
        apply_fsdp(model, par._dp_sp, param_dtype, offload_optimizer=offload_optimizer,
                   ignored_params=_seq_sharded_params(par) or None)
    return par


def _seq_sharded_params(par: Parallelized) -> set[nn.Parameter]:
    params = dict(par.model.named_parameters())
    return {params[name] for name in par.seq_sharded}
