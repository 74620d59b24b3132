"""Tiled MLP: a token-wise module run over sequence tiles, recomputed tile by tile.

A SwiGLU MLP over ``L`` local tokens holds ``w1 x``, ``w3 x``, ``silu(w1 x)`` and
their product, each ``(L, ffn_dim)``: at 8B (ffn 14,336 = 3.5 x dim) and 256K
local tokens that is ~4 x 7 GiB in bf16, the largest working set of a block in
backward. Any module that treats tokens independently (the MLP, a norm) gives the
same result when run on slices of the sequence, so :class:`TiledForward` runs the
module's forward on ``tile``-token slices under ``no_grad`` (only the output is
kept) and, in backward, recomputes one slice at a time with autograd on and takes
its gradients. Only one tile's intermediates ever exist, forward or backward.
This is ALST's ``TiledMLP`` (Arctic Long Sequence Training, arXiv 2506.13996).

Parameter gradients. The parameters are inputs of the autograd Function: backward
returns their gradient summed over tiles (``torch.autograd.grad`` per tile, one
running sum per parameter), so autograd accumulates them once into ``.grad`` like
any other op. Nothing is written to ``.grad`` behind autograd's back, which is what
ALST has to work around under DeepSpeed ZeRO-3 (it marks ``ds_grad_is_ready=False``
on all but the last tile so ZeRO's per-parameter hooks reduce once).

FSDP2. Its hooks sit on module ``__call__`` of the units (seqpar: every block and
the root); during a unit's forward and backward the module's parameters are the
unsharded tensors. The parameters are collected at call time, so the Function
saves and differentiates the unsharded tensors (as ``nn.Linear`` does), and the
tiles call the module's *original* ``forward``, not ``__call__``: module hooks run
once per call, never per tile, so even a tiled module that is its own FSDP unit
gathers once, and its post-backward reduce-scatter fires after the last tile.

Limits: the module must be token-wise and deterministic (no dropout: the
recompute would draw new masks), and its forward must not communicate along the
sequence (Megatron TP-SP's row-parallel reduce-scatter would split each tile
across ranks); :func:`apply_tiled_mlp` refuses tensor-parallel MLPs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


def _tiles(length: int, tile: int) -> list[tuple[int, int]]:
    return [(s, min(length, s + tile)) for s in range(0, length, tile)]


class TiledForward(torch.autograd.Function):
    """``fn(x)`` computed over slices of ``x`` along ``dim`` of ``tile`` positions."""

    @staticmethod
    def forward(ctx, fn: Callable, tile: int, dim: int, x: torch.Tensor, *params):
        dev = x.device.type
        ctx.fn, ctx.tile, ctx.dim = fn, tile, dim
        ctx.autocast = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.save_for_backward(x, *params)
        out = None
        with torch.no_grad():
            for s, e in _tiles(x.shape[dim], tile):
                y = fn(x.narrow(dim, s, e - s))  # (.., c, d_in) -> (.., c, d_out)
                if out is None:  # the output's shape is known only after one tile
                    shape = list(y.shape)
                    shape[dim] = x.shape[dim]
                    out = y.new_empty(shape)
                out.narrow(dim, s, e - s).copy_(y)
                del y
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        dev = x.device.type
        enabled, dtype = ctx.autocast
        want = [i for i, p in enumerate(params) if ctx.needs_input_grad[4 + i]]
        need_x = ctx.needs_input_grad[3]
        dx = torch.empty_like(x) if need_x else None
        dparams: list[torch.Tensor | None] = [None] * len(params)
        for s, e in _tiles(x.shape[ctx.dim], ctx.tile):
            x_t = x.narrow(ctx.dim, s, e - s).detach().requires_grad_(need_x)
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                y = ctx.fn(x_t)  # recompute this tile only
            inputs = ([x_t] if need_x else []) + [params[i] for i in want]
            grads = torch.autograd.grad(y, inputs, grad_out.narrow(ctx.dim, s, e - s),
                                        allow_unused=True)
            del y
            if need_x:
                dx.narrow(ctx.dim, s, e - s).copy_(grads[0])
                grads = grads[1:]
            for i, g in zip(want, grads, strict=True):
                if g is None:
                    continue
                if dparams[i] is None:
                    dparams[i] = g
                else:
                    dparams[i] += g
        return None, None, None, dx, *dparams


def tiled_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int,
                  params: list[torch.Tensor], *, dim: int = -2) -> torch.Tensor:
    """``fn(x)`` over ``tile``-position slices of ``x`` along ``dim``, recomputed per slice
    in backward. ``params``: every tensor ``fn`` uses that needs a gradient."""
    if tile <= 0:
        raise ValueError(f"tiled_forward: tile must be a positive number of tokens, got {tile}")
    return TiledForward.apply(fn, tile, dim % x.dim(), x, *params)


def tile_module(module: nn.Module, tile: int, *, dim: int = -2) -> nn.Module:
    """Make ``module``'s forward run over ``tile``-token slices (in place; parameter names
    and hooks unchanged). The module takes one tensor ``(..., L, d)``."""
    if tile <= 0:
        raise ValueError(f"tile_module: tile must be a positive number of tokens, got {tile}")
    if getattr(module, "_seqpar_tile", None) is not None:
        raise ValueError(f"tile_module: {type(module).__name__} is already tiled "
                         f"({module._seqpar_tile} tokens)")
    inner = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        # the parameters as they are now: FSDP2 swaps in unsharded tensors per forward
        params = [p for p in module.parameters() if p.requires_grad]
        return tiled_forward(inner, x, tile, params, dim=dim)

    module.forward = forward
    module._seqpar_tile = tile
    return module


def apply_tiled_mlp(model: nn.Module, tile: int) -> None:
    """Tile every block's ``feed_forward`` (seqpar's Transformer) at ``tile`` tokens;
    ``tile <= 0`` does nothing (``--mlp-chunk 0`` = off)."""
    if tile <= 0:
        return
    for i, block in enumerate(model.layers):
        mlp = block.feed_forward
        if any(hasattr(m, "sequence_parallel") or hasattr(m, "gather_input")
               for m in mlp.modules()):
            raise ValueError(f"apply_tiled_mlp: layer {i}'s MLP is tensor-parallel (its "
                             f"sequence reduce-scatter cannot run per tile); use tp=1 or "
                             f"mlp chunk 0")
        tile_module(mlp, tile)
