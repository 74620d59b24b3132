"""Sequence-parallel attention: one module per strategy behind ``attention``."""

from __future__ import annotations

import math

import torch

from ..comm import group_rank_size, hybrid_groups, is_hybrid_mesh, resolve_group
from ..layout import Layout, get_layout
from .allgather import allgather_attention
from .blockwise import PlannedAttention
from .hybrid import hybrid_attention
from .plan import ScoreBlock, documents_from_cu_seqlens, make_plan, plan_work
from .ring import ring_attention
from .rsa import rsa_attention
from .ulysses import ulysses_attention
from .validate import STRATEGIES, check_inputs
from .work import work_per_rank

#: strategy name -> ``fn(q, k, v, *, group, layout, causal, scale, documents)``; ``group``
#: is what ``_groups`` resolved: a ProcessGroup, or for ``hybrid`` the 2-D mesh.
#: A new strategy is one module plus one row here (and its name in validate.STRATEGIES).
_BY_NAME = {
    "rsa": rsa_attention,
    "ring": ring_attention,
    "ulysses": ulysses_attention,
    "allgather": allgather_attention,
    "hybrid": hybrid_attention,
}


def _groups(strategy: str, group) -> tuple[object, list, int, int]:
    """``(group for the strategy, groups to check over, world, heads world)``."""
    if strategy != "hybrid":
        pg = resolve_group(group)
        world = group_rank_size(pg)[1]
        return pg, [pg], world, world
    if not is_hybrid_mesh(group):
        raise ValueError("strategy='hybrid' needs group= a 2-D DeviceMesh with "
                         f"mesh_dim_names ('ring', 'ulysses') (seqpar.hybrid_mesh), got "
                         f"{type(group).__name__} with dims "
                         f"{getattr(group, 'mesh_dim_names', None)}")
    groups = list(hybrid_groups(group))
    heads_world = group_rank_size(groups[0])[1]
    return group, groups, heads_world * group_rank_size(groups[1])[1], heads_world


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, strategy: str = "ring",
              group=None, causal: bool = False, layout: str | Layout = "contiguous",
              softmax_scale: float | None = None, cu_seqlens: torch.Tensor | None = None,
              check: bool = True) -> torch.Tensor:
    """Exact attention over a sequence sharded across ``group``.

    q ``(B, Hq, L_local, D)``, k/v ``(B, Hkv, L_local, D)``: this rank's tokens,
    laid out by ``layout``. Returns this rank's output shard ``(B, Hq, L_local, D)``.
    ``group``: ProcessGroup, 1-D DeviceMesh or None (default group); for
    ``strategy="hybrid"`` a 2-D DeviceMesh with dims ``"ring"`` and ``"ulysses"``,
    built by ``seqpar.hybrid_mesh(U, R)`` (Ulysses on adjacent ranks). Its sequence
    slices follow global rank order (``seqpar.comm.hybrid_slices``), so shards made
    with the default group or with ``group=mesh`` are the same and both are right
    when the mesh spans the world; on a sub-mesh (one dp replica) shard with
    ``group=mesh``.
    ``cu_seqlens``: global document boundaries of packed sequences (int, first
    0, last L); attention never crosses a document.
    ``check=False`` skips the cross-rank input check (one tiny all-gather and a
    host sync) once a caller knows its inputs agree.
    """
    group, groups, world, heads_world = _groups(strategy, group)
    if check:
        check_inputs(q, k, v, strategy=strategy, layout=layout, causal=causal, groups=groups,
                     world=world, heads_world=heads_world, cu_seqlens=cu_seqlens)
    lay = get_layout(layout)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    length = q.shape[2] * world
    documents = (documents_from_cu_seqlens(cu_seqlens, length)
                 if cu_seqlens is not None else None)
    if world == 1:
        plan = make_plan([(0, length)], [(0, length)], causal, documents)
        return PlannedAttention.apply(q, k, v, plan, scale)
    return _BY_NAME[strategy](q, k, v, group=group, layout=lay, causal=causal, scale=scale,
                              documents=documents)


__all__ = ["ScoreBlock", "STRATEGIES", "attention", "make_plan", "plan_work", "work_per_rank"]
