"""The benchmark's runner registry: a peer registered from outside shows up in the
options, the variant grid, the measured records, the JSON summary and the report.

The fake peer computes plain SDPA on the whole problem on every rank and returns
its rank's rows, so it passes the numerics check; on CPU the real peer (torch
context_parallel) is recorded as unsupported, which leaves the fake as best peer.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from seqpar.bench import attention, grid, report
from seqpar.bench.launch import spawn
from seqpar.bench.problem import Problem, Variant
from seqpar.bench.runners import Built, Runner
from seqpar.bench.sdpa import SdpaStep


class FakePeer(Runner):
    """``fake-peer/sdpa``: full SDPA on every rank, this rank's contiguous rows returned."""

    name = "fake-peer"
    kind = "peer"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, device: str) -> None:
        parser.add_argument("--fake-peer-label", default="sdpa")

    @classmethod
    def variants(cls, args, world):
        if args.no_peer:
            return [], []
        label = getattr(args, "fake_peer_label", "sdpa")
        return [Variant("peer", f"fake-peer/{label}", backend="default", runner=cls.name)], []

    def setup(self, p: Problem, v: Variant) -> Built:
        d = self.ctx.d
        share = p.length // d.world
        positions = torch.arange(d.rank * share, (d.rank + 1) * share, device=d.device)
        q, k, v_, dout = self.ctx.inputs(p, None)
        step = SdpaStep(*(t.requires_grad_() for t in (q, k, v_)), dout, p.causal)
        # (B, H, L, D) -> (B, H, L/P, D): this rank's rows
        return Built(probe=lambda: step.probe()[:, :, share * d.rank:share * (d.rank + 1)],
                     step=step, positions=positions, notes=lambda: {"gqa": step.gqa})


@pytest.fixture
def fake_peer():
    grid.register(FakePeer)
    try:
        yield FakePeer
    finally:
        grid.unregister(FakePeer)


def test_registered_peer_in_options_and_grid(fake_peer):
    with pytest.raises(ValueError):
        grid.register(FakePeer)  # one name, one runner
    args = attention.parse_args(["--fake-peer-label", "x", "--ceiling-backends", "math,default",
                                 "--strategies", "ring", "--layouts", "zigzag"])
    names = [v.name for v in grid.variants_for(args, 2)]
    # first tiers in registry order (ceiling, ours, torch-cp, fake), then the later tiers
    assert names == ["sdpa-1dev/math", "ring/zigzag", "torch-cp/default/allgather",
                     "torch-cp/default/alltoall", "fake-peer/x", "sdpa-1dev/default"]
    args.no_peer = True
    assert "fake-peer/x" not in [v.name for v in grid.variants_for(args, 2)]


def test_unregistered_peer_is_gone():
    args = attention.parse_args([])
    assert not any(v.runner == "fake-peer" for v in grid.variants_for(args, 2))
    assert not hasattr(args, "fake_peer_label")


def _worker_with_fake_peer(args: argparse.Namespace) -> int:
    grid.register(FakePeer)  # a fresh (spawned) process: register before the run starts
    return attention.worker(args)


def test_registered_peer_end_to_end(fake_peer, tmp_path):
    out = tmp_path / "bench.json"
    args = attention.parse_args(["--seq-lens", "64", "--heads", "2", "--kv-heads", "1",
                                 "--head-dim", "8", "--causal", "--strategies", "ring",
                                 "--layouts", "contiguous", "--warmup", "0", "--iters", "1",
                                 "--out", str(out), "--timeout", "60"])
    assert spawn(_worker_with_fake_peer, 2, args, grace_s=20) == 0
    data = json.loads(out.read_text())
    fake = [r for r in data["results"] if r["name"] == "fake-peer/sdpa"]
    assert len(fake) == 1 and fake[0]["status"] == "ok" and fake[0]["kind"] == "peer", fake
    assert fake[0]["check"]["ok"] and fake[0]["gqa"] == "enable_gqa"
    assert "bytes_sent_per_rank" not in fake[0]  # only seqpar's collectives are counted
    ours = next(r for r in data["results"] if r["name"] == "ring/contiguous")
    assert ours["best_peer"] == "fake-peer/sdpa"
    assert ours["ratio_to_best_peer"] == pytest.approx(
        ours["tflops_per_gpu"] / fake[0]["tflops_per_gpu"])
    assert data["summary"][0]["best_peer"]["name"] == "fake-peer/sdpa"
    table = report.format_table(data["results"], data["meta"])
    assert "fake-peer/sdpa" in table and "seqpar kernels: reference" in table
    assert data["meta"]["kernels"][0]["choices"][0]["kernel"] == "reference"
