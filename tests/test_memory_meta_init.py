"""Meta-device build: each rank materialises only its own shards, with the weights of
the one-process run (``seqpar.models.init`` is a function of seed, name and row).

* the init of any row range equals the same rows of the whole tensor (block seeding);
* ``seqpar.train.loop.build`` under sp=2 and sp=4 FSDP2, tp=2 x sp=2 (FSDP2 and
  replicated) gives, gathered, exactly the one-process weights;
* a rank's peak host memory while building a ~180M-parameter model over 2 ranks
  stays well below the whole model's size (the eager build held all of it).
"""

from __future__ import annotations

import resource

import pytest
import torch

from seqpar.models import model_config
from seqpar.models.init import ROWS_PER_SEED, init_rule, normal_rows
from seqpar.train import TrainConfig
from seqpar.train.loop import build


def test_row_ranges_match_the_whole_tensor():
    shape = (3 * ROWS_PER_SEED + 7, 5)
    whole = normal_rows(3, "layers.0.attention.wq.weight", shape, 0.02, slice(0, shape[0]))
    assert whole.shape == shape and 0.015 < whole.std().item() < 0.025
    for r0, r1 in ((0, 1), (5, 70), (63, 65), (100, shape[0]), (shape[0], shape[0])):
        part = normal_rows(3, "layers.0.attention.wq.weight", shape, 0.02, slice(r0, r1))
        assert torch.equal(part, whole[r0:r1])
    other = normal_rows(3, "layers.0.attention.wk.weight", shape, 0.02, slice(0, shape[0]))
    assert not torch.equal(other, whole)  # the name is part of the seed
    assert not torch.equal(normal_rows(4, "layers.0.attention.wq.weight", shape, 0.02,
                                       slice(0, shape[0])), whole)


def test_init_rules():
    cfg = model_config("8b")
    assert init_rule("layers.3.attention_norm.weight", cfg) == ("ones", 0.0)
    assert init_rule("norm.weight", cfg) == ("ones", 0.0)
    assert init_rule("layers.0.feed_forward.w2.weight", cfg) == ("normal", 0.02 / 8)
    assert init_rule("layers.0._checkpoint_wrapped_module.attention.wo.weight",
                     cfg) == ("normal", 0.02 / 8)
    assert init_rule("tok_embeddings.weight", cfg) == ("normal", 0.02)


def _cfg(world: int, **kw) -> TrainConfig:
    base = dict(model="tiny", seq_len=64, batch_size=2, steps=1, dp=1, sp=world, tp=1)
    return TrainConfig(**{**base, **kw}).resolve(world, cuda=False)


def _full_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    par, _, _ = build(cfg, torch.device("cpu"))
    out = {}
    for name, p in par.model.named_parameters():
        out[name] = par.full_tensor(name, p.detach()).clone()
    return out


@pytest.fixture(scope="module")
def reference():
    return _full_weights(_cfg(1, fsdp=False)), _full_weights(_cfg(1, fsdp=False, model="125m",
                                                                   n_layers=1))


def _compare(rank, world, reference):
    tiny, small = reference
    cases = [dict(fsdp=True), dict(fsdp=True, model="125m", n_layers=1)]
    if world == 4:
        cases += [dict(tp=2, sp=2, fsdp=True), dict(tp=2, sp=2, fsdp=False)]
    bad = []
    for case in cases:
        ref = small if case.get("model") == "125m" else tiny
        got = _full_weights(_cfg(world, **case))
        assert set(got) == set(ref), (case, sorted(set(got) ^ set(ref)))
        bad += [f"{case} {n}" for n in ref if not torch.equal(got[n], ref[n])]
    assert not bad, f"rank {rank}/{world}: weights differ from the 1-process run: {bad[:4]}"


@pytest.mark.parametrize("world", [2, 4])
def test_same_weights_as_one_process(spawn, reference, world):
    spawn(_compare, world, reference)


def _peak_host(rank, world, full_bytes):
    build(_cfg(world, fsdp=True), torch.device("cpu"))  # process groups, allocator warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    cfg = _cfg(world, model="1b", n_layers=3, fsdp=True)
    par, _, _ = build(cfg, torch.device("cpu"))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    local = sum(p.to_local().numel() * 4 for p in par.model.parameters())
    assert local <= full_bytes / world * 1.05
    # the eager build held the whole model (full_bytes) before sharding it
    assert grown < 0.75 * full_bytes, \
        f"rank {rank}: peak RSS grew {grown / 2**20:.0f} MiB building a " \
        f"{full_bytes / 2**20:.0f} MiB model over {world} ranks (its shard: {local / 2**20:.0f})"


def test_rank_never_holds_the_whole_model(spawn):
    full = model_config("1b", n_layers=3, vocab_size=264).num_params() * 4
    assert full > 650 * 2**20
    spawn(_peak_host, 2, full)


def _live_peak_dtensor(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from seqpar.memory.measure import LivePeak

    mesh = init_device_mesh("cpu", (world,))
    a = distribute_tensor(torch.randn(256, 64), mesh, [Shard(0)])
    with LivePeak() as m:
        b = a * 2  # a DTensor output: its local shard's storage is what is counted
        c = b + 1
        del b
        d = c.to_local() * 3
    local = 256 // world * 64 * 4
    assert m.peak == 2 * local and m.live == 2 * local, (m.peak, m.live, local)
    assert d.shape == (256 // world, 64)


def test_live_peak_counts_dtensor_shards(spawn):
    spawn(_live_peak_dtensor, 2)
