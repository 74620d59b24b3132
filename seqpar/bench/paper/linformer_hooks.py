"""Experiment 4's hooks for seqpar's Linformer (``attention="linformer"`` of the bert-*
models, ``seqpar.parallel.linformer.apply_linformer``), used when this build has it.

:func:`hooks` returns ``(factory, wire)`` for :func:`.experiments.linformer`, or
``(None, None)`` while the model config has no Linformer option (experiment 4 then
reports "needs linformer"). Both are picklable objects, since the CLI hands them
to spawned ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch.nn as nn

from ...models import ModelConfig, build_model, model_config
from ...parallel.gradients import all_reduce_grads


def available() -> bool:
    """True when the model config has Linformer's options (the linformer branch)."""
    names = {f.name for f in fields(ModelConfig)}
    return {"attention", "linformer_k", "max_seq_len"} <= names


@dataclass(frozen=True)
class LinformerFactory:
    """``factory(spec)``: bert-* with Linformer attention, ``k`` projected keys/values,
    E/F sized for the trial's length."""

    k: int

    def __call__(self, spec) -> nn.Module:
        if spec.seq_len < self.k:
            raise ValueError(f"linformer_k={self.k} is larger than the length {spec.seq_len}")
        return build_model(model_config(spec.model, attention="linformer", linformer_k=self.k,
                                        max_seq_len=spec.seq_len, vocab_size=spec.vocab_size))


@dataclass(frozen=True)
class LinformerWire:
    """``wire(model, group, spec)``: shard E/F by the contiguous layout and install the
    Linformer SP attention; the returned sync sums every gradient over the group except
    the rank's own E/F columns (already exact per rank)."""

    def __call__(self, model: nn.Module, group, spec) -> Callable[[], None]:
        from ...parallel.linformer import apply_linformer

        sharded = apply_linformer(model, group, "contiguous")
        params = [p for name, p in model.named_parameters()
                  if p.requires_grad and name not in sharded]
        return lambda: all_reduce_grads([p.grad for p in params], group)


def hooks(k: int) -> tuple[LinformerFactory | None, LinformerWire | None]:
    """(factory, wire) when Linformer is in this build, else (None, None)."""
    if not available():
        return None, None
    return LinformerFactory(k), LinformerWire()
