"""`seqpar train --hf`'s model build never holds the whole model on a rank.

The build (:func:`seqpar.train.hf_train.build_hf`: meta device -> seqpar attention ->
memory options -> FSDP2 -> ``to_empty`` -> :func:`seqpar.hf.load_weights` from
sharded safetensors) of a 64 MiB (fp32) model is measured by the process's peak
resident memory (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; a
tensor meter such as ``LivePeak`` cannot see inside FSDP2's DTensors). With FSDP2
over 4 ranks each rank's peak rise (the second build: the first pays for lazy
imports) is its quarter, one tensor's region in flight and the safetensors pages
it read (measured about 0.4x; asserted: under 0.6x); the same build in one process without
FSDP rises by at least the whole model (about 1.45x), so the meter is not vacuous.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch
import torch.distributed as dist
from test_hf_parity import tiny_config
from test_train_hf import _tokenizer
from transformers import AutoModelForCausalLM

from seqpar.train import TrainConfig
from seqpar.train.hf_train import build_hf


def _folder(tmp_path):
    torch.manual_seed(0)
    # a large vocabulary: the embedding and head dominate, as for Llama-3 at small sizes
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=32768,
                                                         hidden_size=256, head_dim=64),
                                             attn_implementation="sdpa")
    path = tmp_path / "model"
    model.save_pretrained(path, max_shard_size="20MB")
    _tokenizer().save_pretrained(path)
    nbytes = sum(p.numel() * 4 for p in model.parameters())
    return path, nbytes


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _peak(path, world: int, fsdp: bool, **memory) -> tuple[float, float]:
    """(peak resident bytes above the start, local parameter bytes) of the build."""
    cfg = TrainConfig(hf=str(path), data="unused.txt", seq_len=32, batch_size=1,
                      dtype="float32", dp=1, sp=world, tp=1, fsdp=fsdp, **memory)
    cfg = cfg.resolve(world, cuda=False)
    build_hf(cfg, torch.device("cpu"))  # warm-up: lazy imports, first-use buffers
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    start = _status_kib("VmRSS")
    par = build_hf(cfg, torch.device("cpu"))
    rise = (_status_kib("VmHWM") - start) * 1024
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * 4
                for p in par.model.parameters())
    return rise, local


def _sharded(rank, world, path, nbytes):
    peak, local = _peak(path, world, True, loss_chunk=16, mlp_chunk=8,
                        activation_checkpointing="selective")
    assert local <= nbytes / world + 2**16, (local, nbytes)
    assert peak < 0.6 * nbytes, (rank, peak, local, nbytes)
    dist.barrier()


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc needed")
def test_sharded_load_peak_is_a_shard(spawn, tmp_path):
    path, nbytes = _folder(tmp_path)
    assert len(list(path.glob("*.safetensors"))) > 1  # really sharded
    whole, local = _peak(path, 1, False)
    assert local == nbytes and whole >= nbytes, (whole, nbytes)
    spawn(_sharded, 4, path, nbytes)
