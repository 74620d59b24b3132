"""Issue 17's step mechanics on CPU: no host sync in an unlogged step, the
``--profile-step`` split, MFU in the summary, the default activation checkpointing."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import seqpar.train.loop as loop_mod
from seqpar.train import TrainConfig, train
from seqpar.train.cli import parse_config
from seqpar.train.memory_plan import default_checkpointing
from seqpar.train.progress import Progress
from seqpar.train.step_profile import PARTS, split

#: what reads a device value on the host (each one a device sync on a GPU)
SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def _seqpar_caller() -> bool:
    """Whether the tensor method was called from seqpar's own code (torch's CPU-only
    internals, e.g. the CPU AdamW reading its step count, are not the step's syncs)."""
    frame = sys._getframe(2)
    return "/seqpar/" in frame.f_code.co_filename.replace("\\", "/")


@pytest.mark.parametrize("options", [
    dict(activation_checkpointing="selective", loss_chunk=32),
    dict(activation_checkpointing="full"),
])
def test_no_host_sync_in_unlogged_steps(monkeypatch, options):
    """Steps 2..5 of 6 with log_every=100 are unlogged: neither the step nor the
    progress may read a tensor on the host (the loss, its count, the gradient norm, the
    chunked loss's chunks and its backward all stay on the device)."""
    calls: list[str] = []
    state = {"watch": False, "step": -1}

    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _o=original, _n=name, **k):
            if state["watch"] and _seqpar_caller():
                calls.append(f"step {state['step'] + 1}: Tensor.{_n} from "
                             f"{sys._getframe(1).f_code.co_filename}:"
                             f"{sys._getframe(1).f_lineno}")
            return _o(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)

    real_step, real_done = loop_mod.train_step, Progress.step_done

    def step(*a, **k):
        state["step"] = k["step"]
        state["watch"] = 1 <= k["step"] <= 4  # 0: warm-up and logged; 5: the last, logged
        try:
            return real_step(*a, **k)
        finally:
            state["watch"] = False

    def done(self, step, out, device):
        state["watch"] = 1 <= step <= 4
        try:
            return real_done(self, step, out, device)
        finally:
            state["watch"] = False

    monkeypatch.setattr(loop_mod, "train_step", step)
    monkeypatch.setattr(Progress, "step_done", done)
    cfg = TrainConfig(seq_len=64, batch_size=2, steps=6, warmup=2, log_every=100, **options)
    result = train(cfg.resolve(1, cuda=False), quiet=True)
    assert calls == [], "\n".join(calls)
    assert len(result.losses) == 6 and all(isinstance(x, float) for x in result.losses)


def test_the_sync_detector_detects():
    """The detector above is not blind: a float() of a tensor from seqpar code counts."""
    from seqpar.train.step import StepOutput

    out = StepOutput(loss=torch.tensor(1.0), accuracy=torch.tensor(0.5),
                     tokens=torch.tensor(3.0), grad_norm=torch.tensor(2.0), lr=0.1)
    seen = []
    original = torch.Tensor.tolist

    def wrapped(self, *a, **k):
        if _seqpar_caller():
            seen.append(1)
        return original(self, *a, **k)

    torch.Tensor.tolist = wrapped
    try:
        r = out.resolved()
    finally:
        torch.Tensor.tolist = original
    assert seen == [1] and (r.loss, r.accuracy, r.tokens, r.grad_norm) == (1.0, 0.5, 3, 2.0)


def test_profile_step_split_and_mfu_in_metrics(tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    cfg = TrainConfig(seq_len=64, batch_size=2, steps=4, warmup=1, log_every=2,
                      activation_checkpointing="full", loss_chunk=32, profile_step=3,
                      peak_tflops=1.0, metrics=str(metrics))
    result = train(cfg.resolve(1, cuda=False))
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    prof = rows[2]["profile"]
    assert "profile" not in rows[1] and "profile" not in rows[3]
    assert set(prof["ms"]) == set(PARTS) == set(prof["fraction"])
    assert sum(prof["ms"].values()) == pytest.approx(prof["span_ms"], rel=1e-6)
    assert prof["ms"]["recompute"] > 0 and prof["ms"]["optimizer"] > 0
    assert prof["ms"]["gemm"] > 0 and prof["device"] == "cpu"
    assert "step 3 profile (cpu)" in out and "causal-MFU" in out
    assert all(r["causal_mfu"] > 0 and r["hardware_mfu"] > r["causal_mfu"] for r in rows)
    assert result.mfu["causal_mfu"] > 0 and "summary:" in out


def test_split_orders_and_hides_overlapped_communication():
    # (name, start, end, launch) in ms; the recompute range covers launches in [10, 20]
    spans = [("ampere_bf16_gemm", 0, 10, 0), ("ncclKernel_AllGather", 5, 15, 1),
             ("vectorized_elementwise_kernel", 12, 14, 2),
             ("flash_fwd_kernel", 20, 30, 15), ("ncclKernel_ReduceScatter", 30, 35, 16),
             ("multi_tensor_apply_kernel", 40, 45, 50)]
    r = split(spans, {"recompute": [(10, 20)], "optimizer": [(50, 60)]})
    ms = r["ms"]
    assert r["span_ms"] == 45
    assert ms["gemm"] == 10 and ms["elementwise_norm"] == 2
    assert ms["exposed_comm"] == 3 + 5  # 10..12 and 14..15 alone, then 30..35
    assert ms["recompute"] == 10 and ms["optimizer"] == 5 and ms["attention"] == 0
    assert ms["idle"] == 5 + 5 and sum(ms.values()) == 45  # 15..20 and 35..40


def test_default_checkpointing_is_the_fastest_that_fits():
    def cfg(*argv):
        return parse_config(["--model", "8b", "--vocab-size", "128256", "--batch-size", "1",
                             *argv]).resolve(2, cuda=True)

    h200 = 139.8
    assert parse_config([]).activation_checkpointing is None  # not given
    assert parse_config(["--activation-checkpointing"]).activation_checkpointing == "full"
    chunks = ("--loss-chunk", "4096", "--mlp-chunk", "16384")
    loss = ("--loss-chunk", "4096")
    assert default_checkpointing(cfg("--seq-len", "65536", *loss), cuda=True,
                                 gpu_memory_gib=h200) == "selective"
    assert default_checkpointing(cfg("--seq-len", "65536"), cuda=True,  # the full logits
                                 gpu_memory_gib=h200) == "full"
    assert default_checkpointing(cfg("--seq-len", "131072", *chunks), cuda=True,
                                 gpu_memory_gib=h200) == "selective"
    assert default_checkpointing(cfg("--seq-len", "131072"), cuda=True,
                                 gpu_memory_gib=h200) == "full"
    assert default_checkpointing(cfg("--seq-len", "262144", *chunks), cuda=True,
                                 gpu_memory_gib=h200) == "full"
    small = parse_config(["--model", "tiny", "--seq-len", "512"]).resolve(2, cuda=True)
    assert default_checkpointing(small, cuda=True, gpu_memory_gib=h200) == "none"
    assert default_checkpointing(cfg("--seq-len", "65536", *loss), cuda=False) == "none"
    auto = cfg("--seq-len", "65536", "--memory", "auto", *loss)
    assert default_checkpointing(auto, cuda=True, gpu_memory_gib=h200) == "none"


def test_speed_option_errors(capsys):
    from seqpar.train.cli import main

    for argv, message in [(["--compile", "--tp", "2", "--nproc", "2"], "--compile needs tp=1"),
                          (["--profile-step", "9", "--steps", "3"], "--profile-step 9"),
                          (["--fused", "triton"], "--fused 'triton'"),
                          (["--peak-tflops", "0"], "--peak-tflops 0")]:
        argv = argv if "--nproc" in argv else [*argv, "--nproc", "1"]
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def _prefetch_ranks(rank, world):
    base = dict(seq_len=64, batch_size=2, steps=3, warmup=1, log_every=100, sp=world,
                activation_checkpointing="selective")
    plain = train(TrainConfig(**base).resolve(world, cuda=False), quiet=True).losses
    ahead = train(TrainConfig(fsdp_prefetch=2, **base).resolve(world, cuda=False),
                  quiet=True).losses
    assert ahead == plain, (ahead, plain)  # prefetch moves all-gathers, not the math


def test_fsdp_prefetch_keeps_the_losses(spawn):
    spawn(_prefetch_ranks, 2)


def test_fsdp_prefetch_needs_fsdp(capsys):
    from seqpar.train.cli import main

    assert main(["--fsdp-prefetch", "2", "--nproc", "1"]) == 2
    assert "--fsdp-prefetch 2 needs FSDP2" in capsys.readouterr().err
    from seqpar.models import build_model
    from seqpar.parallel.prefetch import set_fsdp_prefetch

    with pytest.raises(ValueError, match="not an FSDP2 unit"):
        set_fsdp_prefetch(build_model("tiny"), 1)
