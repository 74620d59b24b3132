"""Sequence-parallel attention: one module per strategy behind ``attention``."""

from __future__ import annotations

import math

import torch

from ..comm import group_rank_size, resolve_group
from ..layout import Layout, get_layout
from .allgather import allgather_attention
from .blockwise import PlannedAttention
from .plan import Block, make_plan, plan_work
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
              softmax_scale: float | None = None, check: bool = True) -> torch.Tensor:
    """Exact attention over a sequence sharded across ``group``.

    q ``(B, Hq, L_local, D)``, k/v ``(B, Hkv, L_local, D)``: this rank's tokens,
    laid out by ``layout``. Returns this rank's output shard ``(B, Hq, L_local, D)``.
    ``check=False`` skips the cross-rank input check (one tiny all-gather and a
    host sync) once a caller knows its shapes agree.
    """
    pg = resolve_group(group)
    if check:
        check_inputs(q, k, v, strategy=strategy, layout=layout, causal=causal, group=pg)
    lay = get_layout(layout)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    _, world = group_rank_size(pg)
    if world == 1:
        length = q.shape[2]
        plan = make_plan([(0, length)], [(0, length)], causal)
        return PlannedAttention.apply(q, k, v, plan, scale)
    return _BY_NAME[strategy](q, k, v, group=pg, layout=lay, causal=causal, scale=scale)


__all__ = ["Block", "STRATEGIES", "attention", "make_plan", "plan_work", "work_per_rank"]
