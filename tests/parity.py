"""Dense float64 reference and the sharded-vs-dense comparison, shared by tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import seqpar

#: strategies that run over a 1-D group (hybrid needs a 2-D mesh: tests/test_hybrid.py)
ONE_D_STRATEGIES = [s for s in seqpar.STRATEGIES if s != "hybrid"]

TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make_problem(seed, b, hq, hkv, length, d, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, length, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, length, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, length, d, generator=g, dtype=torch.float64)
    dout = torch.randn(b, hq, length, d, generator=g, dtype=torch.float64)
    return [t.to(device) for t in (q, k, v, dout)]


def dense_mask(length, causal, cu_seqlens=None):
    """Boolean (L, L) mask, True = may attend, or None for plain full/causal."""
    if cu_seqlens is None:
        return None
    pos = torch.arange(length)
    doc = torch.bucketize(pos, torch.as_tensor(cu_seqlens[1:]).long(), right=True)
    mask = doc[:, None] == doc[None, :]
    return mask & (pos[None, :] <= pos[:, None]) if causal else mask


def dense_reference(q, k, v, dout, causal, cu_seqlens=None):
    """Output and gradients of unsharded attention in float64."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    mask = dense_mask(q.shape[2], causal, cu_seqlens)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                         is_causal=causal and mask is None,
                                         enable_gqa=q.shape[1] != k.shape[1])
    out.backward(dout.double())
    return out.detach(), q.grad, k.grad, v.grad


def check_case(*, strategy, layout, causal, dtype, group, full, rank, world, label="",
               cu_seqlens=None, shard_group="same"):
    """Run one sharded attention and compare output and grads with the dense reference.

    ``full`` = (q, k, v, dout) float64 full-length tensors, identical on every rank.
    ``shard_group``: the group ``seqpar.shard`` gets (default: ``group``).
    Returns a list of failure strings (empty when the case passes).
    """
    sg = group if isinstance(shard_group, str) else shard_group
    q, k, v, dout = full
    # round through the test dtype first so the reference sees the same inputs
    q, k, v, dout = (t.to(dtype).double() for t in (q, k, v, dout))
    ref = dense_reference(q, k, v, dout, causal, cu_seqlens)
    shards = [seqpar.shard(t, dim=2, group=sg, layout=layout).to(dtype) for t in (q, k, v)]
    ql, kl, vl = (t.detach().clone().requires_grad_() for t in shards)
    out = seqpar.attention(ql, kl, vl, strategy=strategy, group=group, causal=causal,
                           layout=layout, cu_seqlens=cu_seqlens)
    out.backward(seqpar.shard(dout, dim=2, group=sg, layout=layout).to(dtype))
    got = [out.detach(), ql.grad, kl.grad, vl.grad]
    failures = []
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        r_local = seqpar.shard(r, dim=2, group=sg, layout=layout)
        err = rel_err(g, r_local)
        if not err <= TOL[dtype]:
            failures.append(f"{label} {strategy}/{layout}/causal={causal}/{dtype}: "
                            f"{name} rel err {err:.3g} > {TOL[dtype]:g} on rank {rank}/{world}")
    return failures


class FirstGrads:
    """``train(on_gradients=...)`` hook keeping the dense gradients of the first step."""

    def __init__(self):
        self.grads = None

    def __call__(self, step, par):
        if step == 0:
            self.grads = par.full_gradients()


def compare_training(name: str, got, ref, tol: float = 1e-5) -> list[str]:
    """Problems of a run ``(losses, first-step grads)`` against the reference run's."""
    (losses, grads), (ref_losses, ref_grads) = got, ref
    bad = []
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    if len(losses) != len(ref_losses) or not worst <= tol:
        bad.append(f"{name}: loss rel err {worst:.3g}: {losses} vs {ref_losses}")
    if sorted(grads) != sorted(ref_grads):
        return bad + [f"{name}: gradient names differ"]
    for key, want in ref_grads.items():
        err = ((grads[key] - want).norm() / want.norm()).item()
        if not err <= tol:
            bad.append(f"{name}: step-1 grad of {key} rel err {err:.3g}")
    return bad


#: packed text documents for the training tests' ``text_file`` fixture
TEXT = "\n".join(f"document {i}: " + "the quick brown fox jumps over the lazy dog " * (i % 3 + 1)
                 for i in range(40))
