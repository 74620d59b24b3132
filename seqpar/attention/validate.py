"""Input checks that fail fast, identically on every rank, before any data moves.

Each rank checks its own tensors, then one small all-gather of a fixed-size
shape vector lets every rank see every other rank's problem, so a mismatch
that only shows across ranks (or a bad tensor on one rank) raises the same
``ValueError`` everywhere instead of hanging a later collective.
"""

from __future__ import annotations

import zlib

import torch
import torch.distributed as dist

from ..comm import collective_device, group_rank_size
from ..comm.compat import all_gather_flat
from ..layout import LAYOUT_NAMES, Layout, get_layout
from .plan import documents_from_cu_seqlens

STRATEGIES = ("rsa", "ring", "ulysses", "allgather", "hybrid")
_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _local_problems(q, k, v, strategy, layout) -> list[str]:
    problems = []
    if strategy not in STRATEGIES:
        problems.append(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    try:
        get_layout(layout)
    except ValueError as exc:
        problems.append(str(exc))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            problems.append(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        elif t.dim() != 4:
            problems.append(f"{name} must be 4-D (B, H, L_local, D), got shape {tuple(t.shape)}")
    if problems:
        return problems
    if k.shape != v.shape:
        problems.append(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        problems.append(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, L_local or D")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        problems.append(f"query heads Hq={q.shape[1]} must be a multiple of kv heads "
                        f"Hkv={k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype):
        problems.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in _DTYPES:
        problems.append(f"dtype {q.dtype} not supported; use one of {_DTYPES}")
    if q.shape[2] == 0:
        problems.append("L_local is 0: every rank needs at least one token")
    return problems


def layout_id(layout: Layout) -> int:
    """A number naming a layout and its parameters, equal on every process: the
    built-ins by index (readable in messages), any other by a CRC of its class
    and fields, so a user-defined ``Layout`` subclass is checked like the rest."""
    if type(layout).__module__ == Layout.__module__ and layout.name in LAYOUT_NAMES:
        return LAYOUT_NAMES.index(layout.name)
    text = f"{type(layout).__module__}.{type(layout).__qualname__}:{layout.name}:{layout!r}"
    return 1000 + zlib.crc32(text.encode())


def _signature(q, k, strategy, layout, causal) -> list[int]:
    """Fixed-length summary of this rank's call, comparable across ranks."""
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)
            and q.dim() == 4 and k.dim() == 4):
        return [-1] * 10
    lay = (layout if isinstance(layout, Layout)
           else get_layout(layout) if isinstance(layout, str) and layout in LAYOUT_NAMES
           else None)
    return [*q.shape, *k.shape[1:2],
            STRATEGIES.index(strategy) if strategy in STRATEGIES else -1,
            layout_id(lay) if lay is not None else -1,
            int(bool(causal)),
            _DTYPES.index(q.dtype) if q.dtype in _DTYPES else -1,
            getattr(lay, "block", 0) or 0]


def _cross_rank_problems(sigs: list[list[int]]) -> list[str]:
    fields = ["B", "Hq", "L_local", "D", "Hkv", "strategy", "layout", "causal", "dtype",
              "layout block", "cu_seqlens length", "cu_seqlens values"]
    problems = []
    for i, name in enumerate(fields):
        values = [s[i] for s in sigs]
        if len(set(values)) > 1:
            problems.append(f"ranks disagree on {name}: " +
                            ", ".join(f"rank {r}={v}" for r, v in enumerate(values)))
    return problems


def _global_problems(q, k, strategy, layout, world, heads_world, cu_seqlens) -> list[str]:
    problems = []
    hq, ls = q.shape[1], q.shape[2]
    if strategy in ("ulysses", "hybrid") and hq < heads_world:
        what = "the group size" if strategy == "ulysses" else "the mesh's ulysses size"
        fix = ("use strategy='hybrid' with a ulysses dim <= Hq, or 'ring'"
               if strategy == "ulysses" else "use a hybrid mesh with ulysses <= Hq, or 'ring'")
        problems.append(f"strategy={strategy!r} needs at least one query head per rank of "
                        f"{what} P={heads_world}, got Hq={hq} ({fix})")
    lay = get_layout(layout)
    granule = lay.granule(world)
    if (ls * world) % granule:
        problems.append(f"layout={lay.name!r} with P={world} needs the global length "
                        f"L={ls * world} (L_local={ls}) to be a multiple of {granule}")
    else:
        try:
            lay.check_length(ls * world, world)  # a layout's own rule (e.g. per document)
        except ValueError as exc:
            problems.append(str(exc))
    if cu_seqlens is not None:
        try:
            documents_from_cu_seqlens(cu_seqlens, ls * world)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _cu_signature(cu_seqlens) -> list[int]:
    if cu_seqlens is None:
        return [0, 0]
    vals = [int(x) for x in cu_seqlens.tolist()]
    return [len(vals), sum((i + 1) * x for i, x in enumerate(vals)) % (1 << 61)]


def check_inputs(q, k, v, *, strategy, layout, causal, groups, world, heads_world,
                 cu_seqlens=None) -> None:
    """Raise ``ValueError`` (same message on every rank) if the call is invalid.

    ``groups``: the process groups the call spans, checked in rounds (for a
    hybrid mesh: ulysses then ring, which together reach every rank).
    """
    problems = _local_problems(q, k, v, strategy, layout)
    if cu_seqlens is not None and not isinstance(cu_seqlens, torch.Tensor):
        problems.append(f"cu_seqlens must be an int tensor, got {type(cu_seqlens).__name__}")
        cu_seqlens = None
    me = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    problems = [f"rank {me}: {p}" for p in problems]
    for group in groups:
        _, size = group_rank_size(group)
        if size == 1:
            continue
        device = collective_device(group)
        sig = _signature(q, k, strategy, layout, causal) + _cu_signature(cu_seqlens)
        mine = torch.tensor([len(problems), *sig], dtype=torch.int64, device=device)
        table = torch.empty(size * mine.numel(), dtype=torch.int64, device=device)
        all_gather_flat(table, mine, group=group)
        rows = table.view(size, -1).tolist()
        if any(r[0] for r in rows):
            # someone has a problem: share the messages (rare, error path only)
            messages: list = [None] * size
            dist.all_gather_object(messages, problems, group=group)
            problems = list(dict.fromkeys(p for msgs in messages for p in msgs))
        else:
            problems = _cross_rank_problems([r[1:] for r in rows])
    if not problems:
        problems = _global_problems(q, k, strategy, layout, world, heads_world, cu_seqlens)
    if problems:
        raise ValueError("seqpar.attention: invalid input: " + "; ".join(problems))
