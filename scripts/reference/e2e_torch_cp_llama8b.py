# Copied unchanged from ../shared/reference/e2e_torch_cp_llama8b.py (the project's PyTorch CP + FSDP2
# baseline) so that GPU scripts can run it beside seqpar in the same call.
"""End-to-end anchor: Llama-3-8B-shaped training step with FSDP2 + PyTorch native
context parallel (ring, head-tail balance, cuDNN SDPA), full activation
checkpointing, bf16 params / fp32 reduce, AdamW. Random init, random tokens.
Run: python3 -m torch.distributed.run --nproc-per-node 4 e2e_torch_cp_llama8b.py
Env: LENS=65536,131072  LAYERS=32 (fewer for a quick check)
"""
import json, math, os, time
import torch, torch.nn as nn, torch.nn.functional as F, torch.distributed as dist
from torch.nn.attention import sdpa_kernel, SDPBackend
from torch.utils.checkpoint import checkpoint

DIM, HEADS, KV, FFN, VOCAB = 4096, 32, 8, 14336, 128256
LAYERS = int(os.environ.get("LAYERS", 32)); HD = DIM // HEADS
OUT = os.environ.get("OUT", "/tmp")


def rope(L, dev):
    inv = 1.0 / (500000.0 ** (torch.arange(0, HD, 2, device=dev, dtype=torch.float32) / HD))
    f = torch.outer(torch.arange(L, device=dev, dtype=torch.float32), inv)
    return torch.cat([f.cos(), f.sin()], dim=-1)  # (L, HD)


def apply_rope(x, cs):  # x (B, H, L, HD), cs (L, HD)
    c, s = cs[..., : HD // 2], cs[..., HD // 2:]
    x1, x2 = x.float()[..., : HD // 2], x.float()[..., HD // 2:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).type_as(x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = nn.RMSNorm(DIM), nn.RMSNorm(DIM)
        self.wq = nn.Linear(DIM, DIM, bias=False); self.wk = nn.Linear(DIM, KV * HD, bias=False)
        self.wv = nn.Linear(DIM, KV * HD, bias=False); self.wo = nn.Linear(DIM, DIM, bias=False)
        self.w1 = nn.Linear(DIM, FFN, bias=False); self.w3 = nn.Linear(DIM, FFN, bias=False)
        self.w2 = nn.Linear(FFN, DIM, bias=False)

    def attn(self, x, cs):
        B, L, _ = x.shape
        q = self.wq(x).view(B, L, HEADS, HD).transpose(1, 2)
        k = self.wk(x).view(B, L, KV, HD).transpose(1, 2)
        v = self.wv(x).view(B, L, KV, HD).transpose(1, 2)
        q, k = apply_rope(q, cs), apply_rope(k, cs)
        k = k.repeat_interleave(HEADS // KV, dim=1); v = v.repeat_interleave(HEADS // KV, dim=1)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(o.transpose(1, 2).reshape(B, L, DIM))

    def forward(self, x, cs):
        x = x + self.attn(self.n1(x), cs)
        h = self.n2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.RMSNorm(DIM); self.out = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tok, cs):
        x = self.emb(tok)
        for l in self.layers:
            x = checkpoint(l, x, cs, use_reentrant=False)
        return self.out(self.norm(x))


def main():
    dist.init_process_group("nccl"); lr = int(os.environ["LOCAL_RANK"]); torch.cuda.set_device(lr)
    rank, world = dist.get_rank(), dist.get_world_size(); dev = torch.device("cuda", lr)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, MixedPrecisionPolicy
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method
    mesh = init_device_mesh("cuda", (world,), mesh_dim_names=("cp",))
    with torch.device("meta"):
        model = Llama()
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for l in model.layers: fully_shard(l, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    model.to_empty(device=dev)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "n1" in n or "n2" in n or n.startswith("norm"): p.fill_(1.0)
            else: p.normal_(0, 0.02)
    nparams = sum(p.numel() for p in model.parameters()); nemb = VOCAB * DIM
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    set_rotate_method(os.environ.get("ROTATE", "allgather"))
    res = {"params": nparams, "layers": LAYERS, "world": world, "torch": torch.__version__}
    for L in [int(x) for x in os.environ.get("LENS", "65536,131072").split(",")]:
        try:
            torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
            g = torch.Generator(device=dev).manual_seed(0)
            tok = torch.randint(0, VOCAB, (1, L + 1), device=dev, generator=g)
            inp, lab = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
            cs = rope(L, dev)
            times = []
            for step in range(3):
                torch.cuda.synchronize(); t0 = time.time()
                with context_parallel(mesh, buffers=[inp, lab, cs], buffer_seq_dims=[1, 1, 0]):
                    logits = model(inp, cs)
                    loss = F.cross_entropy(logits.flatten(0, 1).float(), lab.flatten())
                    del logits
                    loss.backward()
                opt.step(); opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize(); times.append(time.time() - t0)
                if rank == 0: print(f"L={L} step {step} {times[-1]:.2f}s loss {loss.item():.3f}", flush=True)
            t = sorted(times[1:])[0] if len(times) > 1 else times[0]
            dense = 6 * (nparams - nemb) * L          # fwd+bwd matmul flops (no recompute)
            attn = 3.5 * 4 * HEADS * HD * L * L / 2 * LAYERS  # causal fwd+bwd
            tflops = (dense + attn) / world / t / 1e12
            r = {"step_s": t, "tokens_per_s_per_gpu": L / t / world, "model_tflops_per_gpu": tflops,
                 "mfu_vs_989": tflops / 989, "peak_GiB": torch.cuda.max_memory_allocated() / 2**30}
            res[f"L{L}"] = r
            if rank == 0: print(f"L={L}", {k: round(v, 3) for k, v in r.items()}, flush=True)
        except Exception as e:
            res[f"L{L}"] = repr(e)[:300]
            if rank == 0: print("FAIL", L, repr(e)[:300], flush=True)
            break
    if rank == 0: json.dump(res, open(os.path.join(OUT, "e2e_torch_cp_llama8b.json"), "w"), indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
