"""``seqpar bench paper`` on CPU: the search, the trials' equal work, the CLI end to end.

One 4-rank gloo group runs every in-process distributed check (spawned once);
one CLI run covers launching, JSON, tables and the plot. The searches run against
an injected (simulated) memory cap, so the boundary they must find is known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from seqpar.bench.paper import cli
from seqpar.bench.paper.memory_cap import GIB, CapExceeded, MemoryCap, is_oom
from seqpar.bench.paper.memory_model import extrapolate, fit, terms
from seqpar.bench.paper.search import find_max

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- pure logic
@pytest.mark.parametrize("limit,granule,start", [(1, 1, 1), (37, 1, 1), (64, 1, 1),
                                                 (1000, 8, 8), (96, 32, 64), (7, 1, 4)])
def test_search_finds_the_boundary(limit, granule, start):
    calls = []

    def fits(x):
        calls.append(x)
        return x <= limit

    res = find_max(fits, start, granule=granule, max_trials=64)
    want = limit // granule * granule if limit >= start else 0
    assert res.best == want and res.exact, (res, want)
    assert res.first_fail == (want + granule if want else start) or res.first_fail > want
    assert len(calls) == len(set(calls)), f"a value was tried twice: {calls}"


def test_search_budget_and_limit():
    res = find_max(lambda x: x <= 1000, 1, max_trials=4)
    assert res.best == 8 and not res.exact and "budget" in res.stopped
    res = find_max(lambda x: True, 1, limit=100)
    assert res.best == 100 and res.exact and "limit" in res.stopped
    res = find_max(lambda x: x <= 50, 1, out_of_time=lambda: True)
    assert res.best == 0 and res.trials == [] and "time" in res.stopped
    for bad in (dict(start=0), dict(start=12, granule=8), dict(start=8, limit=4)):
        with pytest.raises(ValueError, match="search"):
            find_max(lambda x: True, **bad)


def test_memory_cap_errors_and_oom_classification():
    with pytest.raises(ValueError, match="positive"):
        MemoryCap(0.0, torch.device("cpu"))
    cap = MemoryCap(1.0, torch.device("cpu"))
    cap.check(GIB)  # at the cap: fits
    with pytest.raises(CapExceeded, match="out of memory"):
        cap.check(GIB + 1)
    assert is_oom(CapExceeded("x")) and is_oom(RuntimeError("CUDA out of memory"))
    assert not is_oom(ValueError("bad"))


def test_memory_model_recovers_known_coefficients():
    c, s_lin, s_quad = 3e8, 2.5, 4.0
    pts = []
    for method in ("rsa", "tp"):
        pts = []
        for p, b, n in [(1, 4, 512), (2, 8, 512), (2, 4, 2048), (1, 16, 256), (2, 2, 4096)]:
            w, lin, quad = terms(method, 12, 768, 12, p, b, n)
            pts.append((p, b, n, c + 4 * w + s_lin * lin + s_quad * quad))
        f = fit("bert-base", method, pts)
        assert f is not None and f.rms_rel_error < 1e-9
        assert abs(f.c - c) / c < 1e-6 and abs(f.s_lin - s_lin) < 1e-6
        assert abs(f.s_quad - s_quad) < 1e-6
    assert fit("bert-base", "rsa", pts[:2]) is None  # too few points
    sp, tp = (fit("bert-base", m, [(p, b, n, c + 4 * terms(m, 12, 768, 12, p, b, n)[0]
                                    + s_lin * terms(m, 12, 768, 12, p, b, n)[1]
                                    + s_quad * terms(m, 12, 768, 12, p, b, n)[2])
                                   for p, b, n in [(1, 4, 512), (2, 8, 512), (2, 4, 2048),
                                                   (4, 2, 1024)]]) for m in ("rsa", "tp"))
    ex = extrapolate(sp, tp, 16 * GIB)
    assert ex["P_tp_best"] == 12  # bert-base: TP stops at its 12 heads
    assert ex["max_batch"]["ratio"] > 1 and ex["max_length"]["ratio"] > 1


def test_cli_bad_input_errors_before_launch(capsys):
    cases = [(["--tiny", "--gpus", "8", "--nproc", "4"], "more than the 4 ranks"),
             (["--tiny", "--models", "bert-huge"], "unknown model 'bert-huge'"),
             (["--tiny", "--models", "tiny"], "causal decoder"),
             (["--tiny", "--methods", "rsa,megatron"], "unknown methods ['megatron']"),
             (["--tiny", "--gpu-memory-gib", "-1"], "must be positive, got -1"),
             (["--tiny", "--gpus", "0"], "positive integers"),
             (["--tiny", "--experiments", "5"], "choose from 1,2,3,4")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as err:
            cli.main(argv)
        assert message in str(err.value), (argv, str(err.value))


# ---------------------------------------------------------------- 4 ranks
def _ranks(rank, world):
    from seqpar.bench.launch import Dist
    from seqpar.bench.paper.experiments import NEEDS_LINFORMER, Clock, Plan, linformer
    from seqpar.bench.paper.linformer_hooks import available as linformer_available
    from seqpar.bench.paper.linformer_hooks import hooks as linformer_hooks
    from seqpar.bench.paper.trial import METHODS, TrialContext, TrialSpec, run_trial

    d = Dist(rank, world, rank, torch.device("cpu"), "gloo")
    ctx = TrialContext(d, MemoryCap(None, d.device), [1, 2, 4])

    def spec(method, p, batch=2, seq_len=32, dtype="fp64", **kw):
        return TrialSpec("bert-tiny", method, p, batch, seq_len, dtype=dtype, vocab_size=64,
                         **kw)

    # 1. equal work: every method's per-step losses (2 AdamW steps, so the first step's
    #    gradients are checked through the second loss) equal the one-process model's
    ref = run_trial(spec("tp", 1), ctx)
    assert ref.ok and len(ref.losses) == 2, ref
    for method, p in [(m, 4) for m in METHODS] + [("ring", 2)]:
        r = run_trial(spec(method, p), ctx)
        assert r.ok, (method, p, r)
        for a, b in zip(r.losses, ref.losses):
            assert abs(a - b) <= 1e-10 * abs(b), (method, p, r.losses, ref.losses)
    if linformer_available():  # once Linformer is in the build: SP equals one process too
        f, w = linformer_hooks(8)
        one, four = (run_trial(spec("linformer", p), ctx, f, w) for p in (1, 4))
        assert one.ok and four.ok, (one, four)
        for a, b in zip(four.losses, one.losses):
            assert abs(a - b) <= 1e-10 * abs(b), (four.losses, one.losses)
    no_ckpt = run_trial(spec("rsa", 4, checkpointing=False), ctx)
    assert no_ckpt.ok and abs(no_ckpt.losses[1] - ref.losses[1]) <= 1e-10 * ref.losses[1]

    # 2. bad specs: reported as invalid on every rank, no hang
    r = run_trial(spec("tp", 3), ctx)
    assert r.status == "invalid" and "not divisible by tp=3" in r.reason, r
    r = run_trial(spec("tp", 4, seq_len=32).__class__("bert-tiny", "tp", 8, 2, 32), ctx)
    assert r.status == "invalid" and "more GPUs (8) than heads (4)" in r.reason, r
    r = run_trial(spec("ring", 4, seq_len=30), ctx)
    assert r.status == "invalid" and "seq_len" in r.reason, r

    # 3. the search against an injected cap finds the known boundary on real trials
    #    (at L=64 the activations, not the optimizer step, set the peak from B=3 on)
    peaks = {b: run_trial(spec("rsa", 2, batch=b, seq_len=64, dtype="fp32"), ctx).peak_bytes
             for b in (4, 5)}
    assert peaks[4] < peaks[5], peaks
    ctx.cap = MemoryCap((peaks[4] + peaks[5]) / 2 / GIB, d.device)

    def fits(b):
        r = run_trial(spec("rsa", 2, batch=b, seq_len=64, dtype="fp32"), ctx)
        assert r.status in ("ok", "oom"), r
        if r.status == "oom":
            assert "simulated out of memory" in r.reason
        return r.ok

    res = find_max(fits, 1)
    assert res.best == 4 and res.first_fail == 5 and res.exact, res

    # 4. experiment 4 without Linformer says so, and with hooks runs through them
    ctx.cap = MemoryCap(None, d.device)
    plan = Plan(models=("bert-tiny",), gpus=(1, 4), methods=("rsa",), batch_len=16,
                len_granule=4, vocab_size=64, max_trials=2, dtype="fp64")
    clock = Clock(ctx, plan)
    assert linformer(ctx, clock, plan, "bert-tiny", None, None)["status"] == NEEDS_LINFORMER
    out = linformer(ctx, clock, plan, "bert-tiny", _dense_factory, _ring_wire)
    assert out["status"] == "ok" and [r["P"] for r in out["rows"]] == [1, 4], out
    assert all(r["status"] == "ok" and r["max"] >= 16 for r in out["rows"]), out


def _dense_factory(spec):
    from seqpar.models import build_model, model_config

    return build_model(model_config(spec.model, vocab_size=spec.vocab_size))


def _ring_wire(model, group, spec):
    from seqpar.parallel.parallelize import SequenceParallelAttention

    model.set_attention(SequenceParallelAttention("ring", group, "contiguous"))
    return None  # default: sum every gradient over the group


def test_trials_on_four_ranks(spawn):
    spawn(_ranks, 4, timeout=240)


# ---------------------------------------------------------------- the command
def test_cli_tiny_end_to_end(tmp_path):
    out = tmp_path / "paper"
    cmd = [sys.executable, "-m", "seqpar.cli", "bench", "paper", "--tiny", "--nproc", "4",
           "--gpus", "1,4", "--methods", "rsa,tp", "--experiments", "1,3,4",
           "--max-trials", "3", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "paper.json").read_text())
    assert data["meta"]["plan"]["gpus"] == [1, 4] and data["meta"]["world_size"] == 4
    assert "simulated" in data["meta"]["cap"]
    res = data["results"]["bert-tiny"]
    rows = res["max_batch"]
    assert {(r["P"], r["method"]) for r in rows} == {(1, "rsa"), (1, "tp"), (4, "rsa"),
                                                      (4, "tp")}
    for r in rows:
        assert r["status"] == "ok" and r["max"] >= 1 and r["trials"], r
        ok = [t["x"] for t in r["trials"] if t["status"] == "ok"]
        bad = [t["x"] for t in r["trials"] if t["status"] == "oom"]
        assert max(ok) == r["max"] and all(x > r["max"] for x in bad), r
        if r["exact"]:
            assert r["first_fail"] == r["max"] + 1, r
    weak = res["weak_scaling"]
    assert {w["series"] for w in weak} == {"batch×P", "length×P", "common"}
    assert all(w["status"] == "ok" and w["peak_gib"] > 0 and w["tokens_per_s"] > 0
               for w in weak)
    from seqpar.bench.paper.linformer_hooks import available

    if available():  # Linformer in the build: experiment 4 connects itself
        assert res["linformer"]["status"] == "ok", res["linformer"]
    else:
        assert res["linformer"]["status"] == "needs linformer"
    assert data["memory_model"]["bert-tiny"]["fits"]["rsa"]["points"] >= 3
    assert data["reported"]["max_batch"]["bert-base"]["ratio"] == 13.7
    text = (out / "paper.txt").read_text()
    for needle in ("max batch at L=64", "SP/TP", "weak scaling", "linformer",
                   "memory model"):
        assert needle in text, needle
    try:
        import matplotlib  # noqa: F401

        assert (out / "paper_bert-tiny.png").stat().st_size > 0
    except ImportError:
        assert "matplotlib is not installed" in proc.stdout
    # the same tables again from the JSON, without running anything
    again = subprocess.run([sys.executable, "-m", "seqpar.cli", "bench", "paper",
                            "--from-json", str(out / "paper.json"), "--out", str(tmp_path)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "max batch at L=64" in again.stdout, again.stderr
