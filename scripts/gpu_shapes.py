"""One-GPU study: how cuDNN's causal fwd+bwd rate depends on the shape (L, heads) at equal
FLOPs, and whether splitting one long causal attention into row tiles (one full block and
one diagonal block per tile, merged by lse in fp32) runs faster than one kernel call.

Why: Ulysses runs the full length L with Hq/P heads per GPU, the ceiling runs L/sqrt(P)
with Hq heads; ring runs L/P-sized blocks. If the kernel's rate falls with L, that alone
separates the strategies. Usage: python scripts/gpu_shapes.py [out.json]
"""

from __future__ import annotations

import json
import sys

import torch

from seqpar.attention.blockwise import PlannedAttention
from seqpar.attention.plan import ScoreBlock
from seqpar.bench.timing import cuda_median_ms
from seqpar.kernels import cuda as ck

dev = torch.device("cuda")
K = 1024


def flops(h: int, length: int) -> float:
    return 3.5 * 4 * h * length * length * 128 / 2


def tiles(length: int, tile: int) -> list[ScoreBlock]:
    plan = []
    for i in range(length // tile):
        r0, r1 = i * tile, (i + 1) * tile
        if i:
            plan.append(ScoreBlock(r0, r1, 0, r0, False))
        plan.append(ScoreBlock(r0, r1, r0, r1, True))
    return plan


def run(h: int, length: int, tile: int | None, iters: int) -> dict:
    q, k, v, do = (torch.randn(1, h, length, 128, device=dev, dtype=torch.bfloat16)
                   for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    scale = 128 ** -0.5
    if tile is None:
        def step():
            out, lse = ck.cudnn_forward(q, k, v, scale=scale, causal=True)
            ck.cudnn_backward(do, q, k, v, out, lse, scale=scale, causal=True)
    else:
        plan = tiles(length, tile)

        def step():
            out = PlannedAttention.apply(q, k, v, plan, scale)
            torch.autograd.grad(out, (q, k, v), do)
    torch.cuda.reset_peak_memory_stats()
    ms = cuda_median_ms(step, iters)
    return {"h": h, "L": length, "tile": tile, "ms": ms,
            "tflops": flops(h, length) / ms / 1e9,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "gpu_shapes.json"
    res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "rows": []}
    cases = [(32, 16 * K, None), (8, 32 * K, None), (32, 32 * K, None), (16, 32 * K, None),
             (32, 64 * K, None), (8, 128 * K, None), (32, 256 * K, None), (8, 512 * K, None),
             (8, 32 * K, 8 * K), (8, 32 * K, 16 * K), (8, 128 * K, 16 * K),
             (8, 128 * K, 32 * K), (8, 128 * K, 64 * K), (8, 512 * K, 64 * K),
             (8, 512 * K, 128 * K)]
    for h, length, tile in cases:
        iters = 5 if flops(h, length) < 2e14 else 2
        row = run(h, length, tile, iters)
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
