"""GPU checks (``pytest -m gpu``): bf16 parity of every strategy on NCCL, and a bench smoke run.

Run on the multi-GPU H200 machines before a benchmark (scripts/gpu_bench.sh
does), skipped without CUDA. On GPU the local kernels are cuDNN/flash, not the
fp32 reference the CPU suite exercises, so exactness must be re-proven there:
output and dq/dk/dv of every strategy x layout x mask, bf16, against float64
dense SDPA on the unsharded tensors, rel err <= 2e-2. Self-contained on
purpose (no shared test helpers) so a GPU run, which is scarce, does not
break on an unrelated refactor of the CPU tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
import unittest
from pathlib import Path

import torch

try:
    import pytest
except ImportError:  # the GPU image may lack pytest: `python tests/test_gpu.py` runs these
    pytest = None
else:
    pytestmark = pytest.mark.gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 2e-2
# (B, Hq, Hkv, D): MHA at the benchmark's head dim, and GQA 4:1 at D=64
SHAPES = [(1, 8, 8, 128), (2, 8, 2, 64)]


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _dense(q, k, v, dout, causal):
    """float64 output and grads of unsharded attention (math SDPA on the GPU)."""
    import torch.nn.functional as F

    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                         enable_gqa=q.shape[1] != k.shape[1])
    out.backward(dout.double())
    return out.detach(), q.grad, k.grad, v.grad


def _parity_worker(result_dir: str) -> int:
    """One NCCL rank: every strategy x layout x mask x shape in bf16; failures to a file."""
    import torch.distributed as dist

    import seqpar
    from seqpar.bench.launch import init_from_env

    d = init_from_env(timeout_s=120)
    rank, world = d.rank, d.world
    failures, notes = [], []
    mesh = None
    if "hybrid" in seqpar.STRATEGIES:
        u = 2 if world % 2 == 0 else 1
        mesh = seqpar.hybrid_mesh(u, world // u, d.device.type)
    layouts = ["contiguous", "zigzag", seqpar.Striped(block=64)]
    length = 512 * world
    try:
        for si, (b, hq, hkv, dim) in enumerate(SHAPES):
            g = torch.Generator().manual_seed(1234 + si)
            full = [torch.randn(b, h, length, dim, generator=g, dtype=torch.float64)
                    .to(d.device) for h in (hq, hkv, hkv, hq)]
            # round through bf16 first so the reference sees exactly the benchmark's inputs
            q, k, v, dout = (t.to(torch.bfloat16).double() for t in full)
            for causal in (True, False):
                ref = _dense(q, k, v, dout, causal)
                for strategy in seqpar.STRATEGIES:
                    group = mesh if strategy == "hybrid" else None
                    for layout in layouts:
                        label = f"{strategy}/{layout}/causal={causal}/shape{si}"

                        def shard(t, group=group, layout=layout):
                            return seqpar.shard(t, dim=2, group=group, layout=layout)

                        ql, kl, vl = (shard(t).to(torch.bfloat16).requires_grad_()
                                      for t in (q, k, v))
                        try:
                            out = seqpar.attention(ql, kl, vl, strategy=strategy, group=group,
                                                   causal=causal, layout=layout)
                        except ValueError as exc:  # unsupported combination: say so
                            notes.append(f"{label}: ValueError {exc}")
                            continue
                        out.backward(shard(dout).to(torch.bfloat16))
                        got = (out.detach(), ql.grad, kl.grad, vl.grad)
                        for name, x, r in zip(("out", "dq", "dk", "dv"), got, ref):
                            err = _rel_err(x, shard(r))
                            if not err <= TOL:
                                failures.append(f"{label}: {name} rel err {err:.3g} > {TOL} "
                                                f"on rank {rank}/{world}")
            kernels = getattr(seqpar.kernels, "chosen_backend", None)
            if kernels is not None:
                notes.append(f"shape{si} kernel: {kernels(q.to(torch.bfloat16), k, True)}")
    finally:
        with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as fh:
            json.dump({"failures": failures, "notes": notes}, fh)
        dist.destroy_process_group()
    return 0


def _parity(tmp_path: Path, world: int) -> None:
    if _gpus() < world:
        raise unittest.SkipTest(f"needs {world} GPUs, found {_gpus()}")
    from seqpar.bench.launch import spawn

    code = spawn(_parity_worker, world, str(tmp_path), grace_s=30)
    files = sorted(tmp_path.glob("rank*.json"))
    results = [json.loads(f.read_text()) for f in files]
    failures = [x for r in results for x in r["failures"]]
    notes = sorted({x for r in results for x in r["notes"]})
    print("\n".join(notes))
    assert code == 0 and len(files) == world, f"ranks exited with {code}; notes: {notes}"
    assert not failures, "\n".join(failures + notes)


def test_bf16_parity_every_strategy_2gpus(tmp_path):
    _parity(tmp_path, 2)


def test_bf16_parity_every_strategy_4gpus(tmp_path):
    _parity(tmp_path, 4)


def test_bench_attention_smoke_on_gpus(tmp_path):
    """The benchmark itself on 2 GPUs at a small size: ours, the peer and the ceiling all run
    and our outputs match single-GPU SDPA. Catches GPU-only code paths in a minute, before
    the long run."""
    if _gpus() < 2:
        raise unittest.SkipTest(f"needs 2 GPUs, found {_gpus()}")
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, "-m", "seqpar.cli", "bench", "attention", "--nproc", "2",
           "--seq-lens", "8K", "--heads", "8", "--kv-heads", "8,2", "--head-dim", "128",
           "--dtype", "bf16", "--causal", "--layouts", "contiguous,zigzag", "--warmup", "1",
           "--iters", "2", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    results = json.loads(out.read_text())["results"]
    import seqpar

    for strategy in seqpar.STRATEGIES:
        ok = [r for r in results if r["strategy"] == strategy and r["status"] == "ok"]
        assert ok, f"{strategy} never ran ok:\n{log}"
        for r in ok:
            assert r["check"].get("ok"), (r["name"], r["check"])
            assert r["peak_gib"] > 0 and r["tflops_per_gpu"] > 0
    for kind in ("peer", "ceiling"):
        rows = [r for r in results if r["kind"] == kind]
        bad = [f"{r['name']} hkv={r['hkv']}: {r['status']}: {r['reason']}" for r in rows
               if r["status"] != "ok"]
        assert rows and not bad, "\n".join(bad)


if __name__ == "__main__":  # without pytest: run every test here, report, exit non-zero on failure
    sys.path.insert(0, ROOT)
    failed = 0
    for name, fn in sorted(globals().items()):
        if not (name.startswith("test_") and callable(fn)):
            continue
        try:
            with tempfile.TemporaryDirectory() as tmp:
                fn(Path(tmp))
            print(f"PASS {name}", flush=True)
        except unittest.SkipTest as exc:
            print(f"SKIP {name}: {exc}", flush=True)
        except Exception:  # noqa: BLE001 - report and go on to the next test
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    sys.exit(1 if failed else 0)
