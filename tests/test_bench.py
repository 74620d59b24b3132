"""``seqpar bench attention`` end to end on CPU (2 gloo ranks, tiny sizes), plus its arithmetic.

The GPU run is scarce (one call of at most 10 minutes), so everything that can
break without a GPU must break here first: launching, every strategy and
layout, skip/failure bookkeeping, the numerics check, JSON, table and report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import pytest

import seqpar
from seqpar.bench import report
from seqpar.bench.attention import hybrid_shape, parse_lengths, plan_pairs, variants_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_bench(tmp_path, *extra: str, timeout: float = 150.0):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "seqpar.cli", "bench", "attention", "--nproc", "2",
           "--seq-lens", "128", "--heads", "4", "--kv-heads", "4,2", "--head-dim", "16",
           "--warmup", "1", "--iters", "2", "--out", str(out), *extra]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, out


def test_bench_attention_cpu_every_strategy(tmp_path):
    proc, out = _run_bench(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    meta, results = data["meta"], data["results"]
    assert meta["world_size"] == 2 and meta["torch"] and meta["date"]
    assert meta["command"].startswith("seqpar bench attention")
    assert "TFLOP/s/GPU" in proc.stdout and "results:" in proc.stdout

    ok = [r for r in results if r["status"] == "ok"]
    for r in results:
        assert r["status"] in report.STATUSES, r
        if r["status"] != "ok":
            assert r["reason"], f"{r['name']} is {r['status']} without a reason"
    # every strategy ran, for both masks and both head configs, and passed its check
    for strategy in seqpar.STRATEGIES:
        for causal in (True, False):
            for hkv in (4, 2):
                mine = [r for r in ok if r["strategy"] == strategy and r["causal"] == causal
                        and r["hkv"] == hkv]
                assert mine, f"no successful {strategy} causal={causal} hkv={hkv} run"
    for r in ok:
        assert r["time_ms"] > 0 and r["tflops_per_gpu"] > 0 and r["flops_total"] > 0, r
        assert len(r["times_ms"]) == r["iters"] >= 1 and all(t > 0 for t in r["times_ms"])
        assert r["pct_of_ceiling"] is not None and r["pct_of_ceiling"] > 0
        expect = report.attention_flops(1, 4, r.get("L1") or 128, 16, r["causal"])
        assert math.isclose(r["flops_total"], expect), r
        if r["kind"] == "seqpar":
            assert r["bytes_sent_per_rank"] > 0, r
            check = r["check"]
            assert check["ok"] and check["rel_err"] < check["tol"] <= 1e-4, r
    # the single-device ceiling at equal per-GPU FLOPs, for every problem
    ceilings = [r for r in ok if r["kind"] == "ceiling"]
    assert len(ceilings) == 4
    assert all(r["L1"] == report.equal_flops_length(128, 2) for r in ceilings)
    # the peer is attempted (or recorded as unsupported on CPU) for both rotate methods
    peers = [r for r in results if r["kind"] == "peer"]
    assert {r["rotate_method"] for r in peers} == {"allgather", "alltoall"}
    # striped + causal ring/allgather is recorded as skipped with its reason
    skipped = [r for r in results if r["status"] == "skipped"]
    assert any(r["strategy"] == "ring" and r["layout"] == "striped" for r in skipped)
    # summary rows and the re-rendered report
    assert len(data["summary"]) == 4
    assert all(s["best_seqpar"]["tflops_per_gpu"] > 0 for s in data["summary"])
    text = report.format_table(results, meta, markdown=True)
    for strategy in seqpar.STRATEGIES:
        assert strategy in text
    assert report.main([str(out)]) == 0


def test_bench_budget_records_skips(tmp_path):
    """A budget already spent: nothing runs, everything is recorded as skipped, exit 0."""
    proc, out = _run_bench(tmp_path, "--max-minutes", "0.00001", "--strategies", "ring",
                           "--layouts", "zigzag", "--causal", "--no-peer")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert results and all(r["status"] == "skipped" and "budget" in r["reason"]
                           for r in results)


def test_parse_lengths():
    assert parse_lengths("32K,128K,1M,300") == [32768, 131072, 1 << 20, 300]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_lengths("0")


def test_flops_and_equal_flops_length():
    # issue 5's reference: 32K causal, 32 heads, D=128 -> 56.27 ms is 547 TFLOP/s on one GPU
    flops = report.attention_flops(1, 32, 32768, 128, causal=True)
    assert math.isclose(flops / 56.26838302612305e-3 / 1e12, 547.13, rel_tol=1e-3)
    assert report.attention_flops(1, 1, 10, 1, causal=False, fwd_bwd=False) == 400
    assert report.equal_flops_length(131072, 4) == 65536
    assert report.equal_flops_length(32768, 1) == 32768
    l1 = report.equal_flops_length(32768, 2)
    assert l1 % 128 == 0 and abs(l1 - 32768 / math.sqrt(2)) <= 64


def test_plan_pairs_flags_striped_blowup():
    z, s = seqpar.layout.get_layout("zigzag"), seqpar.layout.get_layout("striped")
    assert plan_pairs(z, "ring", 4, 1024) <= 4
    assert plan_pairs(z, "allgather", 4, 1024) <= 16
    assert plan_pairs(s, "ring", 4, 1024) == 256**2
    assert plan_pairs(s, "ulysses", 4, 1024) == 1
    # ring member 0 holds slices 0 and 1: runs [0,128) [512,640) [128,256) [640,768)
    assert plan_pairs(seqpar.Striped(block=128), "hybrid", 4, 1024, ulysses=2) == 16


def test_hybrid_shape():
    assert hybrid_shape(4) == (2, 2) and hybrid_shape(8) == (4, 2) and hybrid_shape(2) == (2, 1)
    assert hybrid_shape(4, 4) == (4, 1)
    with pytest.raises(ValueError):
        hybrid_shape(4, 3)


def test_derived_metrics_and_priority_order():
    base = dict(L=1024, hkv=8, causal=True, batch=1, hq=8, d=64, dtype="bfloat16",
                status="ok", reason="", world_size=4)
    recs = [dict(base, kind="ceiling", name="sdpa-1dev/cudnn", tflops_per_gpu=500.0, L1=512),
            dict(base, kind="seqpar", name="ring/zigzag", tflops_per_gpu=450.0),
            dict(base, kind="peer", name="torch-cp/cudnn/allgather", tflops_per_gpu=300.0),
            dict(base, kind="peer", name="torch-cp/flash/alltoall", tflops_per_gpu=200.0),
            dict(base, kind="seqpar", name="rsa/zigzag", status="oom", reason="OOM",
                 tflops_per_gpu=None)]
    summary = report.derive(recs)
    assert recs[1]["pct_of_ceiling"] == pytest.approx(90.0)
    assert recs[1]["ratio_to_best_peer"] == pytest.approx(1.5)
    assert recs[4]["pct_of_ceiling"] is None
    assert summary[0]["best_seqpar"]["name"] == "ring/zigzag"
    assert summary[0]["best_seqpar_vs_best_peer"] == pytest.approx(1.5)
    assert "rsa/zigzag: oom" in report.format_table(recs, {"world_size": 4})

    class Args:
        no_ceiling = no_peer = False
        ceiling_backends, peer_backends = ["cudnn", "flash"], ["cudnn", "flash"]
        rotate_methods = ["allgather", "alltoall"]
        strategies, layouts, hybrid_ulysses = ["ring", "hybrid"], ["zigzag"], None

    names = [v.name for v in variants_for(Args, 4)]
    # the budget keeps what matters first: fastest ceiling, ours, then the first peer backend
    assert names[:3] == ["sdpa-1dev/cudnn", "ring/zigzag", "hybrid-u2r2/zigzag"]
    assert names[3:5] == ["torch-cp/cudnn/allgather", "torch-cp/cudnn/alltoall"]
    assert names[5] == "sdpa-1dev/flash"


def test_profile_breakdown_arithmetic():
    from seqpar.bench.profile import Span, breakdown, category

    assert category("ncclDevKernel_SendRecv") == "comm"
    assert category("cudnn_generated_fort_native_sdpa_sm90_knob_7") == "attention"
    assert category("void at::native::elementwise_kernel<copy>") == "copy"
    assert category("void at::native::vectorized_elementwise_kernel<exp>") == "elementwise/other"
    spans = [Span("ncclSendRecv", 0.0, 4.0),            # comm 0-4, compute covers 1-4
             Span("cudnn_sdpa_fwd", 1.0, 3.0), Span("sdpa_bwd", 2.0, 5.0),
             Span("exp_kernel", 7.0, 8.0)]               # idle 5-7
    b = breakdown(spans)
    assert b["span_ms"] == pytest.approx(8.0)
    assert b["by_category_ms"]["attention"] == pytest.approx(4.0)  # union of 1-3 and 2-5
    assert b["by_category_ms"]["comm"] == pytest.approx(4.0)
    assert b["exposed_comm_ms"] == pytest.approx(1.0)              # 0-1 only
    assert b["idle_ms"] == pytest.approx(2.0)
    assert b["compute_busy_ms"] == pytest.approx(5.0)
    assert b["top"][0]["name"] in ("ncclSendRecv", "sdpa_bwd")


def test_bench_profile_cpu(tmp_path):
    proc, out = _run_bench(tmp_path, "--profile", "--strategies", "ring,ulysses",
                           "--layouts", "zigzag", "--causal", "--no-peer", "--kv-heads", "4")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    ok = [r for r in results if r["status"] == "ok"]
    assert len(ok) == 3  # ceiling, ring, ulysses
    for r in ok:
        prof = r["profile"]
        assert prof["span_ms"] > 0 and prof["top"], prof
        assert len(prof["ranks"]) == 2
        assert sum(prof["by_category_ms"].values()) > 0
    assert "comm exposed" in proc.stdout


def test_scaling_table_and_hybrid_variants(tmp_path):
    base = dict(L=1024, hkv=8, causal=True, batch=1, hq=8, d=64, dtype="bfloat16",
                status="ok", reason="")
    files = []
    for world, ours, peer in ((2, 400.0, 380.0), (4, 350.0, 360.0)):
        recs = [dict(base, kind="ceiling", name="sdpa-1dev/cudnn", tflops_per_gpu=500.0,
                     world_size=world),
                dict(base, kind="seqpar", name="ring/zigzag", tflops_per_gpu=ours,
                     world_size=world, peak_gib=1.0),
                dict(base, kind="peer", name="torch-cp/cudnn/allgather", tflops_per_gpu=peer,
                     world_size=world, peak_gib=2.0)]
        path = tmp_path / f"p{world}" / "bench.json"
        report.write_json(str(path), {"world_size": world}, recs)
        files.append(str(path))
    runs = [(f"p{w}", {"world_size": w}, json.loads(open(f).read())["results"])
            for w, f in zip((2, 4), files)]
    lines = report.scaling_table(runs).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 1K | 8 | causal | 2 | p2 | ring/zigzag")
    assert "| 1.05 |" in lines[2] and "| 0.97 |" in lines[3]
    assert report.main([*files, "--scaling"]) == 0

    class Args:
        no_ceiling = no_peer = True
        ceiling_backends = peer_backends = rotate_methods = []
        strategies, layouts, hybrid_ulysses = ["hybrid"], ["zigzag"], [2, 4]

    assert [v.name for v in variants_for(Args, 8)] == ["hybrid-u2r4/zigzag",
                                                       "hybrid-u4r2/zigzag"]
    assert [v.ulysses for v in variants_for(Args, 8)] == [2, 4]
