"""Packed documents (cu_seqlens) for every strategy and layout, and padding to a
length a layout can split (padding as its own document, labels ignored)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parity import ONE_D_STRATEGIES, TOL, check_case, dense_reference, make_problem, rel_err

import seqpar

LAYOUTS = ["contiguous", "zigzag", "striped"]



def _documents(rank, world):
    failures = []
    length = 8 * world
    full = make_problem(5, b=1, hq=4, hkv=2, length=length, d=8)
    # shorter than a shard, longer than a shard, crossing shard borders, empty docs
    cases = [[0, 3, 4, 5 + 8, length - 2, length], [0, length], [0, 1, 1, length],
             [0, 8 * world // 2 + 3, length]]
    for bounds in cases:
        cu = torch.tensor(bounds, dtype=torch.int32)
        for strategy in ONE_D_STRATEGIES:
            if strategy == "ulysses" and 4 % world:
                continue
            for layout in LAYOUTS:
                for causal in (False, True):
                    failures += check_case(strategy=strategy, layout=layout, causal=causal,
                                           dtype=torch.float64, group=None, full=full,
                                           rank=rank, world=world, cu_seqlens=cu,
                                           label=f"docs{bounds}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_packed_documents(spawn, world):
    spawn(_documents, world)


def _padding(rank, world):
    """Padded run == unpadded run: outputs at real tokens and input gradients."""
    length = 4 * world + 3  # no layout splits this
    for layout in LAYOUTS:
        for causal in (False, True):
            q, k, v, dout = make_problem(3, b=1, hq=2, hkv=2, length=length, d=8)
            ref = dense_reference(q, k, v, dout, causal)
            padded = [seqpar.pad_for_layout(t, dim=2, layout=layout)[0] for t in (q, k, v)]
            dpad, n_pad = seqpar.pad_for_layout(dout, dim=2, layout=layout)  # zeros: inert
            plen = length + n_pad
            cu = seqpar.pad_cu_seqlens(None, length, plen)
            local = [seqpar.shard(t, dim=2, layout=layout).requires_grad_() for t in padded]
            out = seqpar.attention(*local, strategy="ring", causal=causal, layout=layout,
                                   cu_seqlens=cu)
            out.backward(seqpar.shard(dpad, dim=2, layout=layout))
            got = [seqpar.unshard(t, dim=2, layout=layout)[:, :, :length]
                   for t in (out.detach(), local[0].grad, local[1].grad, local[2].grad)]
            for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
                assert rel_err(g, r) <= TOL[torch.float64], (layout, causal, name)


def test_padding(spawn):
    spawn(_padding, 3)


def test_padding_labels_do_not_change_loss():
    logits = torch.randn(1, 10, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (1, 10))
    plogits, _ = seqpar.pad_for_layout(logits, dim=1, world=4, layout="zigzag")
    plabels, n = seqpar.pad_for_layout(labels, dim=1, world=4, layout="zigzag",
                                       value=seqpar.IGNORE_INDEX)
    assert n == 6 and plabels.shape[1] == 16
    a = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    b = F.cross_entropy(plogits.flatten(0, 1), plabels.flatten(), ignore_index=-100)
    assert torch.allclose(a, b)
