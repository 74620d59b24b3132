"""Linformer's sequence projection of keys and values (Wang et al., arXiv 2006.04768).

Linformer replaces attention over ``L`` keys by attention over ``k`` *projected*
keys: ``K' = E K`` and ``V' = F V`` with learned ``E, F`` of shape ``(k, L)``
(one pair per layer, shared by the heads). Softmax attention of ``L`` queries to
``k`` keys then costs ``O(L k)`` instead of ``O(L^2)``; it is defined for
bidirectional (encoder) attention only.

This module holds plain parameters and knows nothing of ``torch.distributed``.
It multiplies a *column block* of ``E``/``F`` with the tokens it is handed: one
process holding the whole sequence uses the first ``L`` columns; under sequence
parallelism :mod:`seqpar.parallel.linformer` swaps in a module holding exactly
the columns of the tokens a rank owns, and the attention callable sums the
partial projections over the ranks (``K' = sum_r E[:, pos_r] K_r``).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LinformerProjection(nn.Module):
    """``E``, ``F`` of shape ``(k, n)``: ``n`` sequence positions (``max_seq_len``)."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.e = nn.Parameter(torch.empty(k, n))
        self.f = nn.Parameter(torch.empty(k, n))

    @torch.no_grad()
    def init_weights(self, max_seq_len: int) -> None:
        """N(0, 1/max_seq_len): a projected row sums ``L`` tokens, so its scale stays
        that of one token (uses the global RNG, like the model's other weights)."""
        std = max_seq_len ** -0.5
        nn.init.normal_(self.e, std=std)
        nn.init.normal_(self.f, std=std)

    def columns(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(k, length)`` blocks of E and F for the ``length`` tokens handed in:
        here positions ``0..length-1`` (the whole sequence in one process)."""
        n = self.e.shape[1]
        if length > n:
            raise ValueError(f"Linformer: sequence length {length} exceeds max_seq_len={n} "
                             f"(E/F have {n} columns)")
        return self.e[:, :length], self.f[:, :length]

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v ``(B, H, L, D)`` -> ``E K``, ``F V`` ``(B, H, k, D)`` over these L tokens."""
        e, f = self.columns(k.shape[2])  # 2 x (k, L)
        # (k, L) x (B, H, L, D) -> (B, H, k, D); E/F in the activations' dtype (autocast)
        kp = torch.matmul(e.to(k.dtype), k)
        vp = torch.matmul(f.to(v.dtype), v)
        return kp, vp
