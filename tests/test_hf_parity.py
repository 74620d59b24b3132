"""seqpar.hf against the single-process Hugging Face model (fp32, default attention).

For each supported family a tiny random model is saved to a temp folder; every
rank loads it twice (``attn_implementation="seqpar"`` and the default "sdpa")
and compares this rank's logits shard, the global loss and every parameter's
gradient (summed over the sp group) with the dense run, 1e-5 relative.

Grid (one spawn of 4 gloo ranks): sp=4 over the world and sp=2 over two
sub-groups, each with {ring, ulysses, allgather} x {zigzag, contiguous}, plus
hybrid on a 2x2 mesh (both layouts), for all four families; every case runs a
plain batch and a packed batch (position ids restarting at 0, a different
packing per row). Then FSDP2 (each decoder layer + root) with sp=4, and the
bad-input errors that must come before any collective.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
STRATEGIES = ("ring", "ulysses", "allgather")
LAYOUTS = ("zigzag", "contiguous")
LENGTH, BATCH, VOCAB = 16, 2, 96


def tiny_config(family: str, **overrides):
    """A 2-layer, 4 q / 2 kv head model of ``family`` (hidden 32, head_dim 8)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config,
           "qwen3": Qwen3Config}[family]
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, max_position_embeddings=64,
              tie_word_embeddings=False)
    kw.update(overrides)
    return cls(**kw)


def save_tiny_models(folder) -> dict[str, str]:
    """One saved random model per family (safetensors), by family."""
    from transformers import AutoModelForCausalLM

    paths = {}
    for i, family in enumerate(FAMILIES):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_config(tiny_config(family))
        with torch.no_grad():  # non-trivial norms and biases, so their gradients are checked
            for name, p in model.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        path = folder / family
        model.save_pretrained(path)
        paths[family] = str(path)
    return paths


def batches():
    """A plain batch and a packed one: ``(input_ids, labels, position_ids or None)``."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=g)
    labels = ids.clone()
    labels[0, 3] = -100  # an ignored label
    docs = [[5, 7, 4], [3, 1, 12]]  # per row; a 1-token document too
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in docs])
    packed_labels = ids.clone()
    packed_labels[pos == 0] = -100  # DataCollatorWithFlattening's convention
    return [("plain", ids, labels, None), ("packed", ids, packed_labels, pos)]


def reference(path: str, ids, labels, pos):
    """Dense single-process logits, HF's own loss, and every gradient."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa",
                                                 dtype=torch.float32)
    kw = {} if pos is None else {"position_ids": pos}
    out = model(input_ids=ids, labels=labels, use_cache=False, **kw)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.logits.detach(), out.loss.item(), grads


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = 1e-5):
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= rtol * scale + 1e-12, f"{what}: max error {err:.3g} vs max |ref| {scale:.3g}"


def run_case(model, ref, ids, labels, pos, *, group, strategy, layout, what):
    """One sharded forward/backward against the dense reference."""
    import seqpar
    import seqpar.hf

    ref_logits, ref_loss, ref_grads = ref
    seqpar.hf.apply(model, group=group, strategy=strategy, layout=layout)
    model.zero_grad(set_to_none=True)
    batch = seqpar.hf.shard_batch(ids, labels, group=group, layout=layout, position_ids=pos)
    logits = model(**batch.model_kwargs()).logits  # (B, L/P, V)
    out = seqpar.hf.loss(logits, batch.labels, group)
    out.backward_loss.backward()
    assert_close(logits.detach(), seqpar.shard(ref_logits, dim=1, group=group, layout=layout),
                 f"{what} logits")
    assert abs(out.loss - ref_loss) <= 1e-5 * abs(ref_loss), f"{what} loss {out.loss} {ref_loss}"
    names = [n for n, _ in model.named_parameters()]
    # every rank's partial gradients, summed over the sp group in one flat all-reduce
    flat = torch.cat([p.grad.reshape(-1) for _, p in model.named_parameters()])
    pg = None if group is None or hasattr(group, "mesh_dim_names") else group
    dist.all_reduce(flat, group=pg)
    for name, g in zip(names, flat.split([p.numel() for p in model.parameters()])):
        assert_close(g.view_as(ref_grads[name]), ref_grads[name], f"{what} grad {name}")


def _parity_worker(rank, world, paths):
    from transformers import AutoModelForCausalLM

    import seqpar
    import seqpar.hf  # noqa: F401 - registers "seqpar"

    pair = [dist.new_group([0, 1]), dist.new_group([2, 3])][rank // 2]
    mesh = seqpar.hybrid_mesh(2, 2, "cpu")
    groups = [("sp4", None), ("sp2", pair)]
    for family, path in paths.items():
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="seqpar",
                                                     dtype=torch.float32)
        for kind, ids, labels, pos in batches():
            ref = reference(path, ids, labels, pos)
            cases = [(g, s, lay) for g in groups for s in STRATEGIES for lay in LAYOUTS]
            cases += [(("hybrid2x2", mesh), "hybrid", lay) for lay in LAYOUTS]
            for (gname, group), strategy, layout in cases:
                what = f"{family}/{kind}/{gname}/{strategy}/{layout}"
                run_case(model, ref, ids, labels, pos, group=group, strategy=strategy,
                         layout=layout, what=what)
    _fsdp_case(paths["llama"])
    _errors_before_collectives(paths["llama"], world)


def _fsdp_case(path):
    """FSDP2 over the 4 sp ranks, with transformers' activation checkpointing (the
    document boundaries must reach the recomputed attention): full gradients equal
    the dense ones."""
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoModelForCausalLM

    import seqpar.hf

    _, ids, labels, pos = batches()[1]
    ref_logits, ref_loss, ref_grads = reference(path, ids, labels, pos)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    seqpar.hf.apply(model, strategy="ring", layout="zigzag")
    seqpar.hf.fully_shard_model(model, init_device_mesh("cpu", (dist.get_world_size(),)))
    batch = seqpar.hf.shard_batch(ids, labels, layout="zigzag", position_ids=pos)
    out = seqpar.hf.loss(model(**batch.model_kwargs()).logits, batch.labels)
    out.backward_loss.backward()
    assert abs(out.loss - ref_loss) <= 1e-5 * abs(ref_loss)
    for name, p in model.named_parameters():
        assert_close(p.grad.full_tensor(), ref_grads[name], f"fsdp grad {name}")


def _errors_before_collectives(path, world):
    """Bad input raises the same ValueError on every rank, locally; the group stays usable."""
    from transformers import AutoModelForCausalLM, GPT2Config

    import seqpar.hf

    ids = torch.zeros(1, 12, dtype=torch.long)  # 12 % (2 * 4) != 0
    with pytest.raises(ValueError, match=r"multiples of 8, got L=12"):
        seqpar.hf.shard_batch(ids, layout="zigzag")
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=4,
                                                       vocab_size=VOCAB))
    with pytest.raises(ValueError, match="llama.*mistral.*qwen2.*qwen3"):
        seqpar.hf.apply(gpt2, strategy="ring")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with pytest.raises(ValueError, match="hybrid"):
        seqpar.hf.apply(model, strategy="hybrid")  # no 2-D mesh
    flag = torch.ones(1)
    dist.all_reduce(flag)  # every rank got here: nobody is stuck in a collective
    assert flag.item() == world


def test_hf_parity_all_families(spawn, tmp_path):
    paths = save_tiny_models(tmp_path)
    spawn(_parity_worker, 4, paths, timeout=600.0)
