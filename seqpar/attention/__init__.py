"""Sequence-parallel attention: one module per strategy behind ``attention``."""

from __future__ import annotations

import math

import torch

from ..comm import group_rank_size, hybrid_groups, is_hybrid_mesh, resolve_group
from ..layout import Layout, get_layout
from .allgather import allgather_attention
from .blockwise import PlannedAttention
from .hybrid import hybrid_attention
from .plan import Block, documents_from_cu_seqlens, make_plan, plan_work
from .ring import ring_attention
from .rsa import rsa_attention
from .ulysses import ulysses_attention
from .validate import STRATEGIES, check_inputs
from .work import work_per_rank

_BY_NAME = {
    "rsa": rsa_attention,
    "ring": ring_attention,
    "ulysses": ulysses_attention,
    "allgather": allgather_attention,
}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, strategy: str = "ring",
              group=None, causal: bool = False, layout: str | Layout = "contiguous",
              softmax_scale: float | None = None, cu_seqlens: torch.Tensor | None = None,
              check: bool = True) -> torch.Tensor:
    """Exact attention over a sequence sharded across ``group``.

    q ``(B, Hq, L_local, D)``, k/v ``(B, Hkv, L_local, D)``: this rank's tokens,
    laid out by ``layout``. Returns this rank's output shard ``(B, Hq, L_local, D)``.
    ``group``: ProcessGroup, 1-D DeviceMesh or None (default group); for
    ``strategy="hybrid"`` a 2-D DeviceMesh with dims ``("ulysses", "ring")``.
    ``cu_seqlens``: global document boundaries of packed sequences (int, first
    0, last L); attention never crosses a document.
    ``check=False`` skips the cross-rank input check (one tiny all-gather and a
    host sync) once a caller knows its inputs agree.
    """
    hybrid = strategy == "hybrid"
    if hybrid and not is_hybrid_mesh(group):
        raise ValueError("strategy='hybrid' needs group= a 2-D DeviceMesh with "
                         f"mesh_dim_names ('ulysses', 'ring'), got {type(group).__name__} "
                         f"with dims {getattr(group, 'mesh_dim_names', None)}")
    if hybrid:
        groups = list(hybrid_groups(group))
        heads_world = group_rank_size(groups[0])[1]
        world = heads_world * group_rank_size(groups[1])[1]
    else:
        groups = [resolve_group(group)]
        world = heads_world = group_rank_size(groups[0])[1]
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
    if hybrid:
        return hybrid_attention(q, k, v, mesh=group, layout=lay, causal=causal, scale=scale,
                                documents=documents)
    return _BY_NAME[strategy](q, k, v, group=groups[0], layout=lay, causal=causal,
                              scale=scale, documents=documents)


__all__ = ["Block", "STRATEGIES", "attention", "make_plan", "plan_work", "work_per_rank"]
