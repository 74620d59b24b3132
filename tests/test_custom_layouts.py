"""Issue 12.1/12.4: user-defined layouts work everywhere; per-document zigzag and striped
are exact and balance ragged packed documents; ``shard`` is contiguous for every layout."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from parity import check_case, make_problem

import seqpar


@dataclass(frozen=True)
class TailFirstZigzag(seqpar.Layout):
    """A layout only this test knows: zigzag chunks, the later one first in local order
    (so a rank's runs are not in global order)."""

    name = "tail_first_zigzag"

    def granule(self, world):
        return 2 * world

    def segments(self, rank, world, length):
        self.check_length(length, world)
        c = length // (2 * world)
        return [((2 * world - 1 - rank) * c, c), (rank * c, c)]


def _every_strategy(rank, world, layouts, cases):
    from seqpar.comm import hybrid_mesh

    mesh = hybrid_mesh(2, world // 2, "cpu")
    failures = []
    for cu, length in cases(world):
        full = make_problem(length, b=1, hq=4, hkv=2, length=length, d=8)
        x = full[0]
        for lay in layouts(cu):
            local = seqpar.shard(x, dim=2, layout=lay)
            assert local.is_contiguous()
            assert torch.equal(seqpar.unshard(local, dim=2, layout=lay), x)
            pos = seqpar.position_ids(length, layout=lay)
            assert torch.equal(x.index_select(2, pos), local)
            for strategy in seqpar.STRATEGIES:
                group = mesh if strategy == "hybrid" else None
                for causal in (False, True):
                    failures += check_case(strategy=strategy, layout=lay, causal=causal,
                                           dtype=torch.float64, group=group, full=full,
                                           rank=rank, world=world, cu_seqlens=cu,
                                           label=f"{lay} docs={cu}")
    assert not failures, "\n".join(failures)


def _custom_cases(world):
    length = 8 * world
    docs = torch.tensor([0, 5, length - 3, length], dtype=torch.int32)
    return [(None, length), (docs, length)]


def _custom_layouts(cu):
    return [TailFirstZigzag(), "test_custom_layouts:TailFirstZigzag"]


def test_user_layout_every_strategy(spawn):
    spawn(_every_strategy, 4, _custom_layouts, _custom_cases)


def _doc_cases(world):
    lengths = [2 * world * 3, 2 * world, 2 * world * 5]  # ragged, each a multiple of 2P
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return [(cu, int(cu[-1]))]


def _doc_layouts(cu):
    bounds = tuple(cu.tolist())
    return [seqpar.DocZigzag(bounds), seqpar.DocStriped(bounds), seqpar.DocStriped(bounds, 2)]


def test_per_document_layouts_every_strategy(spawn):
    spawn(_every_strategy, 4, _doc_layouts, _doc_cases)


def test_user_layout_by_import_path_and_errors():
    lay = seqpar.layout.get_layout("test_custom_layouts:TailFirstZigzag")
    assert isinstance(lay, TailFirstZigzag)
    with pytest.raises(ValueError, match="cannot import"):
        seqpar.layout.get_layout("no_such_module:X")
    with pytest.raises(ValueError, match="multiple of 8"):
        seqpar.DocZigzag((0, 8, 20)).segments(0, 4, 20)


@pytest.mark.parametrize("world", [2, 4, 8])
def test_per_document_layouts_balance_ragged_batches(world):
    import random

    rng = random.Random(world)
    for _ in range(5):
        lengths = [2 * world * rng.randint(1, 40) for _d in range(rng.randint(2, 6))]
        bounds = (0, *[sum(lengths[:i + 1]) for i in range(len(lengths))])
        length, cu = bounds[-1], torch.tensor(bounds)
        total = sum(n * (n + 1) // 2 for n in lengths)
        for lay, slack in ((seqpar.DocZigzag(bounds),
                            sum((n // (2 * world)) ** 2 for n in lengths)),
                           (seqpar.DocStriped(bounds), length)):
            work = seqpar.work_per_rank(strategy="ring", world=world, length=length,
                                        causal=True, layout=lay, cu_seqlens=cu)
            assert sum(work) == total
            assert max(work) - min(work) <= slack, (lay.name, lengths, work)
        plain = seqpar.work_per_rank(strategy="ring", world=world, length=length, causal=True,
                                     layout="zigzag", cu_seqlens=cu)
        assert sum(plain) == total


@pytest.mark.parametrize("b", [1, 3])
def test_shard_contiguous_every_layout(spawn, b):
    spawn(_contiguous, 2, b)


def _contiguous(rank, world, b):
    bounds = (0, 4, 16)
    for lay in ("contiguous", "zigzag", "striped", seqpar.Striped(block=2), TailFirstZigzag(),
                seqpar.DocZigzag(bounds), seqpar.DocStriped(bounds)):
        for shape, dim in (((b, 16), 1), ((b, 3, 16, 2), 2), ((16, b), 0)):
            x = torch.arange(torch.Size(shape).numel()).reshape(shape)
            local = seqpar.shard(x, dim=dim, layout=lay)
            assert local.is_contiguous(), (lay, shape)
            local.view(-1)  # what a Hugging Face loss does to shifted labels
            assert torch.equal(seqpar.unshard(local, dim=dim, layout=lay), x), (lay, shape)
