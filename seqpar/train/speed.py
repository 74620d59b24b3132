"""The speed options of ``seqpar train`` (issue 17), kept out of the loop: MFU for the
progress, ``--profile-step``, ``--fused liger`` and the checks that run before any
process starts. ``--compile`` itself is :mod:`seqpar.parallel.compile`."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn

from ..models import ModelConfig
from .config import TrainConfig
from .flops import DEFAULT_PEAK_TFLOPS, mfu_report

FUSED = ("liger",)


def check_speed_options(cfg: TrainConfig) -> None:
    """ValueError for a bad speed option (before any process starts)."""
    if (cfg.compile or cfg.fsdp_prefetch) and cfg.pp > 1:
        raise ValueError(f"--compile and --fsdp-prefetch work with pp=1 (got --pp {cfg.pp})")
    if cfg.compile:
        if cfg.hf:
            raise ValueError("--compile works with the native --model only, not --hf")
        from ..parallel.compile import check_compile

        check_compile(cfg.tp or 1)
    if cfg.fused is not None:
        if cfg.fused not in FUSED:
            raise ValueError(f"--fused {cfg.fused!r}: choose one of {FUSED}")
        if cfg.hf:
            raise ValueError("--fused works with the native --model only, not --hf")
        liger_ops()  # ImportError -> ValueError naming the package
    if cfg.profile_step is not None and not 1 <= cfg.profile_step <= cfg.steps:
        raise ValueError(f"--profile-step {cfg.profile_step} must be a step in 1..{cfg.steps}")
    if cfg.fsdp_prefetch < 0:
        raise ValueError(f"--fsdp-prefetch {cfg.fsdp_prefetch} must be >= 0")
    if cfg.fsdp_prefetch and (not cfg.fsdp or (cfg.dp or 1) * (cfg.sp or 1) * (cfg.tp or 1) < 2
                              or cfg.hf):
        raise ValueError(f"--fsdp-prefetch {cfg.fsdp_prefetch} needs FSDP2 (--fsdp) over more "
                         f"than one rank and the native --model")
    if cfg.peak_tflops is not None and not cfg.peak_tflops > 0:
        raise ValueError(f"--peak-tflops {cfg.peak_tflops} must be positive")


def mfu_function(cfg: TrainConfig, mcfg: ModelConfig, device: torch.device
                 ) -> Callable[[float], dict] | None:
    """``tokens/s/GPU -> {causal_mfu, hardware_mfu}`` on a GPU (989 TFLOP/s unless
    ``--peak-tflops``) or wherever a peak is given; ``None`` otherwise."""
    if cfg.peak_tflops is None and device.type != "cuda":
        return None
    peak = cfg.peak_tflops or DEFAULT_PEAK_TFLOPS
    mode = cfg.checkpointing_mode

    def mfu(tokens_per_s_per_gpu: float) -> dict:
        r = mfu_report(mcfg, cfg.seq_len, tokens_per_s_per_gpu, ac_mode=mode, peak_tflops=peak)
        return {"causal_mfu": r["causal_mfu"], "hardware_mfu": r["hardware_mfu"],
                "tokens_per_s_per_gpu": tokens_per_s_per_gpu}

    return mfu


class StepProfiler:
    """``--profile-step N``: profiles step N (1-based) and reports its split
    (:mod:`seqpar.train.step_profile`) on the progress and in the metrics row."""

    def __init__(self, step: int | None, device: torch.device):
        self.step, self.device = step, device
        self.result: dict = {}

    def around(self, step: int, progress):
        """A context for step ``step`` (0-based): the profiler on the chosen one, which
        is a timing window of its own and not timed (the profiler slows it down).
        ``SEQPAR_SYNC_DEBUG=warn|error`` on a GPU: every step after the run's first
        (which checks inputs and warms up) runs under ``torch.cuda.set_sync_debug_mode``,
        so a device sync inside the step warns (or raises), naming its line."""
        debug = os.environ.get("SEQPAR_SYNC_DEBUG")
        if debug and self.device.type == "cuda" and step > progress.start and (
                self.step is None or step + 1 != self.step):
            return _sync_debug(debug)
        if self.step is None or step + 1 != self.step:
            return nullcontext()
        from .step_profile import profiled

        progress.flush(self.device)
        progress.untimed.add(step)
        progress.step_started()
        return profiled(self.result, self.device.type == "cuda")

    def report(self, step: int, progress) -> None:
        """Before ``progress.step_done``: the split on the progress and in the metrics."""
        if self.step is None or step + 1 != self.step or not self.result:
            return
        from .step_profile import describe

        progress.add_metrics(step, {"profile": self.result})
        progress.say(f"step {step + 1} {describe(self.result)}")


@contextmanager
def _sync_debug(mode: str):
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def liger_ops():
    """Liger's RMSNorm and SiLU-mul autograd Functions; ValueError when not installed."""
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError as exc:
        raise ValueError(f"--fused liger needs the liger-kernel package (pip install "
                         f"liger-kernel; a CUDA GPU and Triton): {exc}") from None
    return LigerRMSNormFunction, LigerSiLUMulFunction


def apply_fused(model: nn.Module, kind: str | None) -> None:
    """``--fused liger``: Liger's Triton kernels for every RMSNorm and SwiGLU MLP of the
    model (in place, parameter names unchanged). RoPE stays seqpar's (the model's
    ``apply_rope`` is not a module to swap)."""
    if kind is None:
        return
    from ..models.transformer import FeedForward, RMSNorm

    rms, silu_mul = liger_ops()
    for module in model.modules():
        if isinstance(module, RMSNorm):
            def norm(x, _m=module):
                return rms.apply(x, _m.weight, _m.eps, 0.0, "llama", False)

            module.forward = norm
        elif isinstance(module, FeedForward) and module.kind == "swiglu":
            def mlp(x, _m=module):
                return _m.w2(silu_mul.apply(_m.w1(x), _m.w3(x)))

            module.forward = mlp
