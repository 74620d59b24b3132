"""``seqpar plan``: the memory planner from the command line.

``seqpar plan --model 8b --vocab-size 128256 --seq-len 524288 --gpus 2
--gpu-memory-gib 139 --host-memory-gib 256 [--json]`` prints whether the
length fits, the predicted peaks, the fastest fitting options and the longest
length that fits (see :mod:`seqpar.memory.planner` for the model).
"""

from __future__ import annotations

import argparse
import json
import sys

from .pipeline_plan import SCHEDULES, PipelineShape
from .planner import plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="seqpar plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model size name (tiny, 125m, 1b, 8b)")
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--seq-len", type=int, required=True, help="global tokens per sequence")
    ap.add_argument("--gpus", type=int, required=True, help="sequence-parallel GPUs (one host)")
    ap.add_argument("--gpu-memory-gib", type=float, required=True, help="per GPU")
    ap.add_argument("--host-memory-gib", type=float, required=True, help="the host's")
    ap.add_argument("--layout", default="zigzag", choices=("zigzag", "contiguous"))
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                    help="compute dtype (master weights and AdamW states are fp32)")
    ap.add_argument("--n-layers", type=int, default=None,
                    help="cut the model to this many blocks (as seqpar train --n-layers)")
    ap.add_argument("--pp", type=int, default=1,
                    help="pipeline stages, each of --gpus GPUs (the worst stage is planned)")
    ap.add_argument("--microbatches", type=int, default=None,
                    help="with --pp: microbatches of --seq-len tokens each (default: pp)")
    ap.add_argument("--pp-schedule", default="1f1b", choices=SCHEDULES)
    ap.add_argument("--virtual-stages", type=int, default=None,
                    help="with --pp-schedule interleaved: stages per rank (default 2)")
    ap.add_argument("--json", action="store_true", help="print the answer as JSON")
    args = ap.parse_args(argv)
    pipe = None
    if args.pp != 1 or args.microbatches is not None or args.virtual_stages is not None:
        virtual = args.virtual_stages or (2 if args.pp_schedule == "interleaved" else 1)
        pipe = PipelineShape(args.pp, args.microbatches or args.pp, args.pp_schedule, virtual)
    try:
        out = plan(args.model, args.vocab_size, args.seq_len, args.gpus, args.gpu_memory_gib,
                   args.host_memory_gib, layout=args.layout,
                   compute_bytes=2 if args.dtype == "bf16" else 4, n_layers=args.n_layers,
                   pipeline=pipe)
    except ValueError as e:
        ap.error(str(e))  # exits 2 with the message
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    c = out["config"]
    verdict = "fits" if out["fits"] else "does NOT fit"
    stages = "" if pipe is None else (f" x pp={pipe.pp} ({pipe.schedule}, "
                                      f"{pipe.microbatches} microbatches)")
    print(f"{args.model} (V={args.vocab_size}) at {args.seq_len} tokens on {args.gpus} GPU(s)"
          f"{stages} "
          f"of {args.gpu_memory_gib:g} GiB, host {args.host_memory_gib:g} GiB: {verdict}")
    print(f"  peak GPU {out['peak_gpu_gib']:.1f} GiB (allocated {out['peak_gpu_allocated_gib']:.1f}"
          f" + allocator/context), peak host {out['peak_host_gib']:.1f} GiB")
    print(f"  {'fastest fitting' if out['fits'] else 'smallest'} options: "
          f"--activation-checkpointing {c['activation_checkpointing']} (offload layers "
          f"{c['offload_layers']}) --loss-chunk {c['loss_chunk']} --mlp-chunk {c['mlp_chunk']}"
          f"{' --offload-optimizer' if c['offload_optimizer'] else ''}")
    print("  breakdown (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                            out["breakdown_gib"].items()))
    print(f"  longest sequence that fits: {out['max_seq_len']} tokens (then "
          f"{out['max_seq_len_bound']} memory binds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
