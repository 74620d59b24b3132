"""Deterministic weight init that does not depend on how a parameter is split.

Why: a model built on the meta device is materialised shard by shard (each rank
fills only the rows/columns it holds), and the training parity tests compare
sharded runs with a one-process run, so every element's initial value must be a
function of (seed, parameter name, row) only, never of the world size, the shard
boundaries or how much of the global RNG was used before.

Scheme: a parameter's dim-0 rows are cut into blocks of ``ROWS_PER_SEED`` rows;
block ``j`` is ``std * randn(rows of block j, *rest)`` drawn from a generator
seeded by ``(seed, crc32(name), j)``. A shard covering rows ``[r0, r1)`` and any
columns draws the blocks overlapping ``[r0, r1)`` (whole rows) and keeps its
slice. Values are drawn in fp32 on CPU, or on the parameter's GPU when it lives on
one (CPU generation of 8B values takes minutes): a GPU's Philox stream differs from
the CPU's, so GPU runs agree with GPU runs of any degrees, CPU runs with CPU runs.

Rules (GPT-2/Llama style, as before): norms 1, embedding and projections
N(0, 0.02), residual outputs (``wo``, ``w2``) N(0, 0.02 / sqrt(2 n_layers)), an
untied LM head N(0, 0.02 / sqrt(2)), Linformer's E/F N(0, 1 / sqrt(max_seq_len)) (as
``LinformerProjection.init_weights``).
"""

from __future__ import annotations

import math
import zlib

import torch

from .transformer import ModelConfig

ROWS_PER_SEED = 64
STD = 0.02
#: module-name prefixes that wrappers add (activation checkpoint, torch.compile, DDP)
_WRAPPERS = ("_checkpoint_wrapped_module.", "_orig_mod.", "module.", "_fsdp_wrapped_module.")


def canonical_name(name: str) -> str:
    """``name`` without wrapper components (the name the plain model gives it)."""
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name


def init_rule(name: str, cfg: ModelConfig) -> tuple[str, float]:
    """``("ones", 0)`` or ``("normal", std)`` for parameter ``name`` of a seqpar model."""
    name = canonical_name(name)
    leaf = name.rsplit(".", 2)
    owner = leaf[-2] if len(leaf) >= 2 else ""
    if owner.endswith("norm") or name.endswith(".bias"):
        return ("ones", 0.0) if name.endswith("weight") else ("zeros", 0.0)
    if name == "output.weight":
        return "normal", STD / math.sqrt(2)
    if owner in ("wo", "w2"):
        return "normal", STD / math.sqrt(2 * cfg.n_layers)
    if owner == "linformer":  # E/F (k, L): a projected row sums L tokens, keep its scale
        return "normal", 1.0 / math.sqrt(max(cfg.max_seq_len, 1))
    return "normal", STD


def _block_seed(seed: int, name: str, block: int) -> int:
    key = zlib.crc32(canonical_name(name).encode())
    return (seed * 1_000_003 + key * 7_919 + block * 104_729 + 17) % (2**63 - 1)


def normal_rows(seed: int, name: str, shape: tuple[int, ...], std: float,
                rows: slice, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows ``rows`` of ``name``'s full ``shape`` init, fp32 on ``device`` (cpu or cuda):
    ``(r1 - r0, *shape[1:])``."""
    r0, r1 = rows.start or 0, shape[0] if rows.stop is None else rows.stop
    rest = tuple(shape[1:])
    if r1 <= r0:
        return torch.empty((0, *rest), device=device)
    parts = []
    for j in range(r0 // ROWS_PER_SEED, (r1 - 1) // ROWS_PER_SEED + 1):
        b0, b1 = j * ROWS_PER_SEED, min((j + 1) * ROWS_PER_SEED, shape[0])
        g = torch.Generator(device=device).manual_seed(_block_seed(seed, name, j))
        # (rows of block j, *rest): always the whole block, so any shard draws the same
        block = torch.randn((b1 - b0, *rest), generator=g, device=device) * std
        parts.append(block[max(r0, b0) - b0:min(r1, b1) - b0])
    return torch.cat(parts)


@torch.no_grad()
def fill_region(param: torch.Tensor, name: str, full_shape: tuple[int, ...],
                region: tuple[slice, ...], cfg: ModelConfig, seed: int) -> None:
    """Write the init of ``region`` (slices of the full ``full_shape``) into ``param``
    (a local tensor of exactly the region's shape)."""
    kind, std = init_rule(name, cfg)
    if kind == "ones":
        param.fill_(1.0)
        return
    if kind == "zeros" or param.numel() == 0:
        param.zero_()
        return
    device = param.device if param.device.type == "cuda" else torch.device("cpu")
    values = normal_rows(seed, name, full_shape, std, region[0], device)
    values = values[(slice(None), *region[1:])]  # whole rows -> this shard's columns
    param.copy_(values.to(param.dtype))


@torch.no_grad()
def init_dense(model: torch.nn.Module, cfg: ModelConfig, seed: int) -> None:
    """Initialise every (whole, unsharded) parameter of ``model`` by the scheme above."""
    for name, p in model.named_parameters():
        fill_region(p, name, tuple(p.shape), tuple(slice(0, n) for n in p.shape), cfg, seed)


__all__ = ["ROWS_PER_SEED", "canonical_name", "fill_region", "init_dense", "init_rule",
           "normal_rows"]
