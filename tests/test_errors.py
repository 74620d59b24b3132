"""Bad input raises ValueError with the numbers, on every rank, within seconds."""

from __future__ import annotations

import time

import pytest
import torch

import seqpar


def _t(*shape):
    return torch.randn(*shape)


def _cases(rank, world):
    """(name, callable, expected message fragment) evaluated on every rank."""
    ok = _t(1, 4, 4, 8)
    return [
        ("ranks disagree on L_local",
         lambda: seqpar.attention(_t(1, 4, 4 + rank, 8), _t(1, 4, 4 + rank, 8),
                                  _t(1, 4, 4 + rank, 8), strategy="ring"),
         "ranks disagree on L_local"),
        ("ranks disagree on heads",
         lambda: seqpar.attention(_t(1, 4 + 4 * (rank == 1), 4, 8), ok, ok,
                                  strategy="allgather"),
         "disagree on Hq"),
        ("non-4-D on one rank only",
         lambda: seqpar.attention(ok[0] if rank == world - 1 else ok, ok, ok, strategy="ring"),
         "must be 4-D"),
        ("fewer heads than ulysses ranks",  # uneven splits work (issue 12), P > Hq cannot
         lambda: seqpar.attention(_t(1, 1, 4, 8), _t(1, 1, 4, 8), _t(1, 1, 4, 8),
                                  strategy="ulysses"),
         r"Hq=1 \(use strategy='hybrid'"),
        ("unknown strategy", lambda: seqpar.attention(ok, ok, ok, strategy="magic"),
         "unknown strategy 'magic'"),
        ("unknown layout", lambda: seqpar.attention(ok, ok, ok, layout="spiral"),
         "unknown layout 'spiral'"),
        ("zigzag needs even local length",
         lambda: seqpar.attention(_t(1, 4, 3, 8), _t(1, 4, 3, 8), _t(1, 4, 3, 8),
                                  layout="zigzag"),
         f"multiple of {2 * world}"),
        ("kv heads do not divide q heads",
         lambda: seqpar.attention(_t(1, 4, 4, 8), _t(1, 3, 4, 8), _t(1, 3, 4, 8)),
         "Hq=4 must be a multiple of kv heads Hkv=3"),
        ("shard length not divisible",
         lambda: seqpar.shard(_t(1, 2, 4 * world + 1, 8), dim=2),
         f"L={4 * world + 1}"),
    ]


def _errors(rank, world):
    for name, fn, fragment in _cases(rank, world):
        start = time.monotonic()
        with pytest.raises(ValueError, match=fragment):
            fn()
        assert time.monotonic() - start < 10, name
    # the group still works after every error: nothing half-done is left in flight
    ok = torch.randn(1, 4, 4, 8)
    seqpar.attention(ok, ok, ok, strategy="ring", causal=True)


@pytest.mark.parametrize("world", [2, 3])
def test_bad_input_raises_everywhere(spawn, world):
    spawn(_errors, world, timeout=120)


def test_single_process_errors():
    for name, fn, fragment in _cases(0, 1):
        if any(w in name for w in ("disagree", "one rank", "ulysses", "shard")):
            continue  # only invalid with several ranks
        with pytest.raises(ValueError, match=fragment):
            fn()
