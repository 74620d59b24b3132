"""Linformer under sequence parallelism: exact against a one-process Linformer in fp64.

Outputs and every gradient (E/F included) for sp in 1..4 x contiguous/zigzag/striped;
bytes on the wire equal 2*B*k*Hkv*D elements per layer and direction; dp x sp with
FSDP2 (E/F ignored by it, summed over dp); checkpoints hold the full (k, L) E/F and
reload under another sp degree and layout; bad input raises clearly.
One spawned gloo group per world size; the cases loop inside it.
"""

from __future__ import annotations

import pytest
import torch

import seqpar
from seqpar.comm import count_bytes
from seqpar.models import build_model, model_config
from seqpar.parallel import ParallelDims, parallelize, sync_gradients
from tests.distributed import run_distributed
from tests.parity import rel_err

LAYOUTS = ("contiguous", "zigzag", "striped")
B, L, K, V = 2, 24, 5, 32  # L: a multiple of every layout's granule for sp = 1..4
TOL = 1e-9


def _cfg():
    return model_config("bert-tiny", attention="linformer", linformer_k=K, max_seq_len=L,
                        vocab_size=V)


def _model():
    torch.manual_seed(0)
    return build_model(_cfg()).double()


def _data():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (B, L), generator=g)
    cot = torch.randn(B, L, V, generator=g, dtype=torch.float64)  # d loss / d logits
    return tokens, cot


def _reference():
    """One process, the whole sequence: logits (B, L, V) and every gradient."""
    model = _model()
    tokens, cot = _data()
    logits = model(tokens, torch.arange(L))
    (logits * cot).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _check(par, ref, *, layout, group, b_slice=slice(None), label=""):
    """Forward/backward the parallel model on this rank's shard; compare with ``ref``."""
    tokens, cot = _data()
    logits_ref, grads_ref = ref
    shard = lambda t: seqpar.shard(t, dim=1, group=group, layout=layout)  # noqa: E731
    pos = seqpar.position_ids(L, group=group, layout=layout)
    logits = par.model(shard(tokens[b_slice]), pos)
    (logits * shard(cot[b_slice])).sum().backward()
    sync_gradients(par)
    failures = []
    err = rel_err(logits, shard(logits_ref[b_slice]))
    if not err <= TOL:
        failures.append(f"{label}: logits rel err {err:.3g}")
    grads = par.full_gradients()
    assert set(grads) == set(grads_ref), (set(grads) ^ set(grads_ref))
    for name, g in grads.items():
        err = rel_err(g, grads_ref[name])
        if not err <= TOL:
            failures.append(f"{label}: grad {name} rel err {err:.3g}")
    return failures


def _sp_cases(rank, world, ckpt_dir, train_ref=None):
    if train_ref is not None:  # world 2 also runs `seqpar train` (one spawn for both)
        _train_cases(rank, world, *train_ref)
    ref = _reference()
    dims0 = ParallelDims(sp=world)
    mesh = dims0.build_mesh()
    failures = []
    for layout in LAYOUTS:
        dims = ParallelDims(sp=world, layout=layout)
        par = parallelize(_model(), dims, mesh)
        group = par.group("sp")
        assert par.model.layers[0].attention.linformer.e.shape == (K, L // world)
        with count_bytes() as fwd:
            tokens, _ = _data()
            par.model(seqpar.shard(tokens, dim=1, group=group, layout=layout),
                      seqpar.position_ids(L, group=group, layout=layout))
        cfg = _cfg()
        payload = cfg.n_layers * 2 * B * K * cfg.n_kv_heads * cfg.head_dim * 8
        assert fwd.bytes_by_kind == {"all_reduce": payload}, dict(fwd.bytes_by_kind)
        par.model.zero_grad(set_to_none=True)
        with count_bytes() as both:  # forward + backward: one all-reduce per layer each
            failures += _check(par, ref, layout=layout, group=group,
                               label=f"sp={world} {layout} rank {rank}")
        assert both.bytes_by_kind == {"all_reduce": 2 * payload}, dict(both.bytes_by_kind)
        assert both.calls == {"all_reduce": 2 * cfg.n_layers}, dict(both.calls)
    if world == 4:
        failures += _fsdp_and_checkpoint(rank, ref, ckpt_dir)
    assert not failures, "\n".join(failures)


def _fsdp_and_checkpoint(rank, ref, ckpt_dir):
    """dp=2 x sp=2 with FSDP2 (zigzag): E/F stay plain sequence shards, summed over dp.
    Then a checkpoint written at sp=4 striped loads into dp=2 x sp=2 zigzag."""
    from seqpar.train.checkpoint import ensure_optimizer_state, load_checkpoint, save_checkpoint

    dims = ParallelDims(dp=2, sp=2, layout="zigzag")
    par = parallelize(_model(), dims, dims.build_mesh(), fsdp=True)
    e = par.model.layers[0].attention.linformer.e
    assert type(e) is torch.nn.Parameter and e.shape == (K, L // 2)  # not an FSDP DTensor
    dp = par.local_rank("dp")
    failures = _check(par, ref, layout="zigzag", group=par.group("sp"),
                      b_slice=slice(dp, dp + 1), label=f"dp=2 sp=2 fsdp rank {rank}")
    # checkpoint: save from sp=4 striped, load into the dp=2 x sp=2 zigzag model
    src_dims = ParallelDims(sp=4, layout="striped")
    src = parallelize(_model(), src_dims, src_dims.build_mesh())
    with torch.no_grad():
        for p in src.model.parameters():
            p.add_(0.5)  # differs from the fresh init the target starts from
    expected = {n: src.full_tensor(n, p.data) for n, p in src.model.named_parameters()}
    src_opt = torch.optim.AdamW(src.model.parameters())
    ensure_optimizer_state(src_opt)
    save_checkpoint(ckpt_dir, 1, src, src_opt)
    load_checkpoint(ckpt_dir / "step-00000001", par, torch.optim.AdamW(par.model.parameters()))
    for n, p in par.model.named_parameters():
        err = rel_err(par.full_tensor(n, p.data), expected[n])
        if not err <= TOL:
            failures.append(f"checkpoint sp=4 striped -> dp=2 sp=2 zigzag: {n} rel err {err:.3g}")
    return failures


def test_linformer_sp1_matches_reference():
    """sp=1 through parallelize (no process group) is the one-process model."""
    par = parallelize(_model(), ParallelDims(), None)
    failures = _check(par, _reference(), layout="contiguous", group=None,
                      label="sp=1")
    assert not failures, failures


@pytest.mark.parametrize("world", [2, 3, 4])
def test_linformer_sp_matches_reference(world, tmp_path):
    run_distributed(_sp_cases, world, tmp_path, _train_reference() if world == 2 else None)


def test_linformer_bad_input():
    with pytest.raises(ValueError, match="causal decoders"):
        model_config("tiny", attention="linformer", linformer_k=4, max_seq_len=16)
    with pytest.raises(ValueError, match="linformer_k=32 is larger than .* max_seq_len=16"):
        model_config("bert-tiny", attention="linformer", linformer_k=32, max_seq_len=16)
    with pytest.raises(ValueError, match="linformer_k > 0"):
        model_config("bert-tiny", attention="linformer")
    model = build_model(_cfg())
    with pytest.raises(ValueError, match="exceeds max_seq_len=24"):
        model(torch.zeros(1, 48, dtype=torch.long), torch.arange(48))
    with pytest.raises(ValueError, match="tp=1"):
        parallelize(model, ParallelDims(tp=2), None)


# ---- seqpar train --attention linformer: per-step losses and gradients equal 1 process
# (run inside the world-2 group of test_linformer_sp_matches_reference)

def _train_cfg(world: int, **kw):
    from seqpar.train import TrainConfig

    base = dict(model="bert-tiny", attention="linformer", linformer_k=8, seq_len=48,
                batch_size=2, steps=4, lr=3e-3, warmup=2, log_every=10**6, data="passkey",
                dp=1, sp=world, tp=1)
    return TrainConfig(**{**base, **kw}).resolve(world, cuda=False)


def _train_cases(rank, world, ref_losses, ref_grads):
    from seqpar.train import train
    from tests.parity import FirstGrads

    failures = []
    for case in (dict(layout="zigzag", fsdp=True), dict(layout="striped", fsdp=False)):
        probe = FirstGrads()
        losses = train(_train_cfg(world, **case), quiet=True, on_gradients=probe).losses
        worst = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
        if not worst <= 1e-5:
            failures.append(f"{case}: losses {losses} vs {ref_losses}")
        for name, g in ref_grads.items():
            err = rel_err(probe.grads[name], g)
            if not err <= 1e-5:
                failures.append(f"{case}: step-1 grad {name} rel err {err:.3g}")
    assert not failures, "\n".join(failures)


def _train_reference():
    """`seqpar train` in one process: per-step losses and step-1 gradients (sp=2 runs
    compare against them inside ``test_linformer_sp_matches_reference[2]``)."""
    from seqpar.train import train
    from tests.parity import FirstGrads

    probe = FirstGrads()
    ref = train(_train_cfg(1, fsdp=False), quiet=True, on_gradients=probe).losses
    assert any(n.endswith("linformer.e") for n in probe.grads)
    return ref, probe.grads


def test_train_linformer_bad_options():
    from seqpar.train.preflight import check_values

    with pytest.raises(ValueError, match="needs a bert-\\* encoder"):
        check_values(_train_cfg(1, model="tiny"))
    with pytest.raises(ValueError, match="--linformer-k 64 must be in 1..--seq-len 48"):
        check_values(_train_cfg(1, linformer_k=64))
    with pytest.raises(ValueError, match="tp=1"):
        check_values(_train_cfg(2, tp=2, sp=1))


def test_linformer_init_keeps_the_projected_scale():
    """E/F ~ N(0, 1/sqrt(L)) in both inits (a projected row sums L tokens), not 0.02."""
    from seqpar.models.init import init_rule

    cfg = _cfg()
    kind, std = init_rule("layers.1.attention.linformer.e", cfg)
    assert kind == "normal" and abs(std * L ** 0.5 - 1) < 1e-12
    e = _model().layers[0].attention.linformer.e
    assert abs(e.std().item() * L ** 0.5 - 1) < 0.2
