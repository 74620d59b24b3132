"""Measure activation peaks of the memory options on one GPU, beside the planner.

``python -m seqpar.memory.calibrate --model 8b --layers 2 --lens 16384,32768``
builds the model with ``--layers`` blocks in bf16 on one CUDA device (no FSDP,
local SDPA attention), runs forward + backward of each option combination, and
prints, per combination, the measured ``max_memory_allocated`` above the
parameters and gradients against the planner's activation terms
(the loss and backward phases less parameters, AdamW states and FSDP units),
plus the gradient difference from the plain run (offload's side-stream copies
must not change results).
A JSON list goes to ``--out``. ``--device cpu`` runs the same (live-tensor peak
from :class:`~seqpar.memory.measure.LivePeak`; the test smoke-runs it that way).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..models import build_model, model_config
from ..train.loss import sp_exact_loss
from .checkpointing import apply_activation_checkpointing
from .chunked_loss import chunked_sp_exact_loss
from .measure import LivePeak
from .planner import GiB, MemoryConfig, estimate
from .tiled_mlp import apply_tiled_mlp

CASES = [  # (ac mode, offload layers, mlp chunk, loss chunk)
    ("full", 0, 0, 0), ("full", 0, 8192, 2048), ("selective", 0, 0, 2048),
    ("full", None, 8192, 2048), ("none", 0, 0, 0),
]


def forward_backward(model, tokens, labels, pos, loss_chunk: int) -> torch.Tensor:
    """One forward + backward of a one-process model, the loss chunked or not; the loss."""
    h = model.tok_embeddings(tokens)  # (1, L, d)
    rope = model.rope(pos)
    for block in model.layers:
        h = block(h, rope)
    h = model.norm(h)
    if loss_chunk:
        out = chunked_sp_exact_loss(h, model.output.weight, labels, None, loss_chunk)
    else:
        logits = model.output(h)  # (1, L, V), kept alive like the training loop does
        out = sp_exact_loss(logits, labels)
    out.backward_loss.backward()
    return out.loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m seqpar.memory.calibrate")
    ap.add_argument("--model", default="8b")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=128256)
    ap.add_argument("--lens", default="16384,32768")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (live-tensor peak)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    cfg = model_config(args.model, vocab_size=args.vocab_size, n_layers=args.layers)
    rows = []
    for length in (int(x) for x in args.lens.split(",")):
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, cfg.vocab_size, (1, length), generator=g).to(dev)
        labels = torch.randint(0, cfg.vocab_size, (1, length), generator=g).to(dev)
        pos = torch.arange(length, device=dev)
        ref_grads = None
        for mode, k, mlp, loss_chunk in CASES:
            torch.manual_seed(0)
            with torch.device(dev):
                model = build_model(cfg).bfloat16()
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            apply_tiled_mlp(model, mlp)
            off = apply_activation_checkpointing(model, mode if k == 0 else "offload",
                                                 offload_layers=k)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            try:
                if cuda:
                    loss = forward_backward(model, tokens, labels, pos, loss_chunk)
                    torch.cuda.synchronize()
                    peak = (torch.cuda.max_memory_allocated() - base) / GiB
                else:
                    with LivePeak() as tracker:
                        loss = forward_backward(model, tokens, labels, pos, loss_chunk)
                    peak = tracker.peak / GiB
                err = None
            except torch.cuda.OutOfMemoryError as e:
                loss, peak, err = float("nan"), float("nan"), str(e)[:120]
            grads = [p.grad.float() for p in model.parameters()]
            diff = None
            if mode == "full" and k == 0 and mlp == 0 and loss_chunk == 0 and err is None:
                ref_grads = grads
            elif ref_grads is not None and err is None:
                diff = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                           for a, b in zip(grads, ref_grads, strict=True))
            mc = MemoryConfig(loss_chunk, mlp, mode, cfg.n_layers if k is None else k)
            est = estimate(cfg, length, 1, mc)  # bf16 compute, as the model here
            parts = est.parts
            # activations only: the phases less parameters, AdamW and FSDP units
            predicted = max(parts["phase_loss"], parts["phase_backward"]) - \
                parts["params_and_adam"] - parts["units"]
            row = dict(L=length, mode=mode, offload_layers=k, mlp_chunk=mlp,
                       loss_chunk=loss_chunk, measured_gib=round(peak, 6),
                       predicted_gib=round(predicted, 6), parts=parts, loss=loss,
                       grad_rel_diff_vs_full=diff, error=err,
                       offload=None if off is None else vars(off.stats))
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model, grads
            if cuda:
                torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
