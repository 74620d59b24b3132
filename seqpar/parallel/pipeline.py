"""Pipeline parallelism composed with sequence, tensor and data parallelism (4D).

``parallelize_pipeline(model, dims, mesh, ...)`` cuts this rank's stages out of the
whole model (:mod:`.pipeline_stages`), applies :func:`~seqpar.parallel.parallelize`
to each stage (TP-SP over ``tp``, sequence-parallel attention over ``sp``,
checkpointing, FSDP2 over ``dp x sp``: the groups of this rank's pp coordinate) and
wraps them in ``torch.distributed.pipelining`` stages and a schedule
(:mod:`.pipeline_schedule`) over the ``pp`` dim of the mesh.

The returned :class:`PipelineParallelized` is a :class:`Parallelized` whose
``model`` holds every stage of this rank under the whole model's parameter names,
so gradient sync, checkpoints (DCP) and optimizers need no pipeline knowledge.
Its ``"world"`` group is the stage's ``dp x sp x tp`` ranks (every rank that holds
part of the batch for these layers). What the pipeline adds after backward:
the tied embedding's two copies (first and last stage) are summed over the pp
group, and the clipping norm is summed over stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.distributed as dist
import torch.nn as nn

from .gradients import clip_grad_norm_tensor, local
from .parallel_dims import ParallelDims
from .parallelize import Parallelized, parallelize
from .pipeline_schedule import (
    BusyTimer,
    MicrobatchLoss,
    chunked_head_stats,
    make_schedule,
    make_stage,
)
from .pipeline_stages import TransformerStage, build_stages


class StageModules(nn.Module):
    """This rank's stage modules; ``named_parameters`` gives the whole model's names."""

    def __init__(self, stages: list[TransformerStage]):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True):
        for stage in self.stages:
            yield from stage.named_parameters(prefix, recurse, remove_duplicate)

    def forward(self, *args, **kwargs):
        raise RuntimeError("pipeline stages run through their schedule, not model(...)")


@dataclass
class PipelineParallelized(Parallelized):
    """A :class:`Parallelized` of this rank's pipeline stages, with their schedule."""

    #: the per-stage handles (one per virtual stage of this rank)
    stage_handles: list[Parallelized] = field(default_factory=list)
    schedule: object | None = None
    loss_fn: MicrobatchLoss | None = None
    timer: BusyTimer | None = None
    #: the group summing the tied embedding's gradient (first + last stage), or None
    tie_group: object | None = None
    holds_tied: bool = False

    @property
    def pp_rank(self) -> int:
        return self.mesh.get_local_rank("pp")

    @property
    def is_first(self) -> bool:
        return any(s.model.is_first for s in self.stage_handles)

    @property
    def is_last(self) -> bool:
        return any(s.model.is_last for s in self.stage_handles)

    def group(self, name: str):
        """As :meth:`Parallelized.group`, but ``"world"`` is this stage's dp x sp x tp
        ranks and ``"pp"`` the pipeline group."""
        if name == "world":
            return self.submesh("dp_sp_tp").get_group()
        return super().group(name)

    def submesh(self, name: str):
        if name == "dp_sp_tp":
            dims = ("dp", "ring", "ulysses", "tp") if self.dims.strategy == "hybrid" \
                else ("dp", "sp", "tp")
            return self.mesh[dims]._flatten("dp_sp_tp")
        return super().submesh(name)

    @torch.no_grad()
    def full_gradients(self) -> dict[str, torch.Tensor]:
        """Every parameter's dense gradient by name, from every stage (collective)."""
        mine = super().full_gradients()
        gathered: list = [None] * self.dims.pp
        dist.all_gather_object(gathered, {k: v.cpu() for k, v in mine.items()},
                               group=self.group("pp"))
        out: dict[str, torch.Tensor] = {}
        for part in gathered:
            for name, grad in part.items():
                out.setdefault(name, grad)
        return out


def _handle_from(par: Parallelized, cls=Parallelized, **extra) -> Parallelized:
    return cls(**{f.name: getattr(par, f.name) for f in fields(Parallelized)}, **extra)


def parallelize_pipeline(model: nn.Module, dims: ParallelDims, mesh, *, device: torch.device,
                         batch_size: int, seq_len: int, fsdp: bool = False,
                         activation_checkpointing: bool | str = False,
                         param_dtype: torch.dtype | None = None, mlp_chunk: int = 0,
                         offload_layers: int | None = None,
                         offload_optimizer: bool = False,
                         loss_chunk: int = 0) -> PipelineParallelized:
    """This rank's stages of ``model`` (built whole on every rank, same seed), each
    parallelized over its pp coordinate's groups, and the schedule that runs them.

    ``batch_size`` / ``seq_len`` are the global batch shape: the stages' microbatch
    shapes ``(B / (dp * microbatches), L / (sp * tp))`` follow from them.
    ``loss_chunk > 0``: the last stage runs the chunked head + loss (no logits; the
    step passes ``labels`` to the schedule, :mod:`.pipeline_schedule`).
    """
    cfg = model.cfg
    dims.validate(mesh.size(), model=cfg, seq_len=seq_len, batch_size=batch_size)
    pp_rank = mesh.get_local_rank("pp")
    stages = build_stages(model, pp_rank, dims.pp, dims.virtual_stages)
    for stage in stages:
        stage.set_head_loss(chunked_head_stats(loss_chunk) if loss_chunk else None)
    handles = []
    for stage in stages:
        par = parallelize(stage, dims, mesh, fsdp=fsdp,
                          activation_checkpointing=activation_checkpointing,
                          param_dtype=param_dtype, mlp_chunk=mlp_chunk,
                          offload_layers=offload_layers, offload_optimizer=offload_optimizer)
        handles.append(_handle_from(par, PipelineParallelized))
    whole = _handle_from(handles[0], PipelineParallelized, stage_handles=handles)
    whole.model = StageModules(stages)
    whole.tp_plan = {k: v for h in handles for k, v in h.tp_plan.items()}
    # the activations between stages: the FSDP2 compute dtype, else fp32 (autocast
    # leaves the residual stream in fp32); the head's logits: the compute dtype
    compute = param_dtype or torch.float32
    act_dtype = compute if whole.fsdp else torch.float32
    microbatch = batch_size // (dims.dp * dims.n_microbatches)
    local_len = seq_len // (dims.sp * dims.tp)
    pp_group = mesh["pp"].get_group()
    pipe_stages = [make_stage(s, s.stage, dims.n_stages, device, pp_group,
                              microbatch=microbatch, local_len=local_len, dim=cfg.dim,
                              vocab=cfg.vocab_size, act_dtype=act_dtype,
                              logits_dtype=compute, head_stats=loss_chunk > 0)
                   for s in stages]
    whole.loss_fn = MicrobatchLoss(chunked=loss_chunk > 0)
    whole.schedule = make_schedule(dims.pp_schedule, pipe_stages, dims.n_microbatches,
                                   whole.loss_fn)
    whole.timer = BusyTimer(pipe_stages, device)
    if cfg.tie_embeddings:
        whole.tie_group = _tie_group(mesh, dims)
        whole.holds_tied = any(s.is_first or s.is_last for s in stages)
    return whole


def _tie_group(mesh, dims: ParallelDims):
    """The group of the first and the last pp rank at this rank's dp/sp/tp coordinate
    (the pp group itself when pp = 2). Every rank takes part in creating it."""
    if dims.pp == 2:
        return mesh["pp"].get_group()
    grid = mesh.mesh.reshape(dims.pp, -1)  # (pp, dp*sp*tp) global ranks
    pairs = [[int(a), int(b)] for a, b in zip(grid[0], grid[-1])]
    mine, _ = dist.new_subgroups_by_enumeration(pairs)
    return mine


@torch.no_grad()
def sync_tied_embedding(par: PipelineParallelized) -> None:
    """Sum the tied embedding's gradient over its first-stage and last-stage copies."""
    if par.tie_group is None or not par.holds_tied:
        return
    for name, p in par.model.named_parameters():
        if name == "tok_embeddings.weight" and p.grad is not None:
            dist.all_reduce(local(p.grad), group=par.tie_group)


@torch.no_grad()
def pipeline_clip_grad_norm(par: PipelineParallelized, max_norm: float) -> torch.Tensor:
    """:func:`~seqpar.parallel.clip_grad_norm_tensor` over every stage: each element of
    the whole model counted once (the tied embedding on its first stage only); the
    norm stays on the device."""
    uncounted: frozenset[int] = frozenset()
    if par.tie_group is not None and not par.is_first:  # the last stage's copy
        uncounted = frozenset(id(p) for n, p in par.model.named_parameters()
                              if n == "tok_embeddings.weight")
    return clip_grad_norm_tensor(par, max_norm, uncounted=uncounted,
                                 across=par.group("pp"))
