"""Linformer attention under sequence parallelism (the paper's sparse-attention result).

The model (:mod:`seqpar.models.linformer`) hands the attention callable each
rank's *partial* projections ``E_r K_r`` and ``F_r V_r`` ``(B, Hkv, k, D)``:
``E_r`` holds the columns of E for the tokens rank r owns under its layout, so
``sum_r E_r K_r = E K`` exactly, whatever the layout. One all-reduce (sum) of
the stacked pair over the sp group gives every rank the projected keys and
values, and the rank's local queries attend to those ``k`` rows (bidirectional).

Bytes per layer and rank: the all-reduce payload ``2 * B * k * Hkv * D`` elements
in forward and the same in backward, independent of the sequence length.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..comm import all_reduce_sum, collective_device, group_rank_size, resolve_group
from ..comm.compat import all_gather_flat


def _check(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, causal: bool,
           documents, group) -> None:
    """Local problems, then one tiny all-gather so a shape mismatch on any rank raises
    the same error on every rank instead of hanging the all-reduce."""
    problems = []
    if causal:
        problems.append("Linformer attention is bidirectional only (causal=True given): "
                        "use a bert-* encoder")
    if documents is not None:
        problems.append("Linformer attention does not support packed documents")
    if q.dim() != 4 or kp.dim() != 4 or kp.shape != vp.shape:
        problems.append(f"q {tuple(q.shape)}, projected k {tuple(kp.shape)} and v "
                        f"{tuple(vp.shape)} must be (B, H, L_local, D) and (B, Hkv, k, D)")
    elif (q.shape[0], q.shape[3]) != (kp.shape[0], kp.shape[3]) or q.shape[1] % kp.shape[1]:
        problems.append(f"q {tuple(q.shape)} and projected k {tuple(kp.shape)} disagree on "
                        f"B, D or heads")
    rank, world = group_rank_size(group) if group is not None else (0, 1)
    if world > 1:
        shape = list(kp.shape) if kp.dim() == 4 else [-1] * 4
        mine = torch.tensor([len(problems), *shape], dtype=torch.int64,
                            device=collective_device(group))
        table = torch.empty(world * mine.numel(), dtype=torch.int64, device=mine.device)
        all_gather_flat(table, mine, group=group)
        rows = table.view(world, -1).tolist()
        if any(r[0] for r in rows) and not problems:
            problems.append(f"another rank of the sp group has invalid input "
                            f"(ranks' problem counts {[r[0] for r in rows]})")
        elif len({tuple(r[1:]) for r in rows}) > 1:
            problems.append(f"projected k shapes differ across ranks: "
                            f"{[tuple(r[1:]) for r in rows]} (same batch, heads, linformer_k "
                            f"and head dim needed everywhere)")
    if problems:
        raise ValueError(f"seqpar linformer attention (rank {rank}): " + "; ".join(problems))


def linformer_attention(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, *,
                        group: dist.ProcessGroup | None = None,
                        softmax_scale: float | None = None) -> torch.Tensor:
    """Local queries ``q (B, Hq, L_local, D)`` attend to ``sum_r kp_r``/``sum_r vp_r``
    ``(B, Hkv, k, D)`` (partial projections summed over ``group``) -> ``(B, Hq, L_local, D)``.
    Differentiable: the backward sums the ranks' gradients of the projections."""
    # 2 x (B, Hkv, k, D) -> (2, B, Hkv, k, D): one all-reduce for both
    kv = all_reduce_sum(torch.stack([kp, vp]), group)
    gqa = q.shape[1] != kp.shape[1]
    return F.scaled_dot_product_attention(q, kv[0], kv[1], scale=softmax_scale,
                                          enable_gqa=gqa)


class LinformerSPAttention:
    """The model's ``attn(q, k, v, causal, documents=None)`` callable for Linformer over
    the sp ``group`` (``None``: one process, no communication). The cross-rank check runs
    once per shape."""

    def __init__(self, group):
        self.group = resolve_group(group) if group is not None else None
        self._checked: set[tuple] = set()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                 documents: list[torch.Tensor] | None = None) -> torch.Tensor:
        key = (tuple(q.shape), tuple(k.shape), q.dtype, causal, documents is None)
        if key not in self._checked:
            _check(q, k, v, causal, documents, self.group)
            self._checked.add(key)
        if self.group is None:  # the whole sequence here: E K is complete
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])
        return linformer_attention(q, k, v, group=self.group)
