"""seqpar.hf with Megatron TP-SP on the HF module names, FSDP2 on top, and per-rank
safetensors loading / gathered export: sp=2 x tp=2 on 4 gloo ranks.

tp groups are adjacent ranks ({0,1}, {2,3}), sp groups {0,2}, {1,3} (tp innermost,
as in the native ("dp", "sp", "tp") mesh). Each rank's logits chunk, the loss and
every gradient (tp-sharded ones at their slice, summed over sp; replicated ones
summed over all ranks) equal the single-process model's, 1e-5 relative.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from test_hf_parity import assert_close, batches, reference, save_tiny_models, tiny_config

CASES = [("llama", "ring", "zigzag"), ("qwen2", "ulysses", "contiguous"),
         ("qwen3", "allgather", "zigzag"), ("mistral", "ring", "contiguous")]


def _tp_worker(rank, world, paths):
    from transformers import AutoModelForCausalLM

    import seqpar
    import seqpar.hf

    tp_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    sp_groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    tp_group, sp_group = tp_groups[rank // 2], sp_groups[rank % 2]
    tp_rank = rank % 2
    for family, strategy, layout in CASES:
        model = AutoModelForCausalLM.from_pretrained(paths[family], dtype=torch.float32)
        seqpar.hf.apply(model, group=sp_group, strategy=strategy, layout=layout)
        sharded = seqpar.hf.apply_tensor_parallel(model, tp_group)
        assert len(sharded) == 2 * 7 + (2 * 3 if family == "qwen2" else 0)  # + q/k/v biases
        for kind, ids, labels, pos in batches():
            what = f"{family}/{kind}/{strategy}/{layout}"
            ref_logits, ref_loss, ref_grads = reference(paths[family], ids, labels, pos)
            model.zero_grad(set_to_none=True)
            batch = seqpar.hf.shard_batch(ids, labels, group=sp_group, layout=layout,
                                          position_ids=pos, tp_group=tp_group)
            logits = model(**batch.model_kwargs()).logits  # (B, L/(sp*tp), V)
            out = seqpar.hf.loss(logits, batch.labels)  # every rank holds part of the batch
            out.backward_loss.backward()
            want = seqpar.shard(ref_logits, dim=1, group=sp_group, layout=layout)
            assert_close(logits.detach(), want.chunk(2, dim=1)[tp_rank], f"{what} logits")
            assert abs(out.loss - ref_loss) <= 1e-5 * abs(ref_loss), what
            for name, p in model.named_parameters():
                g = p.grad.clone()
                if name in sharded:
                    dist.all_reduce(g, group=sp_group)
                    ref = ref_grads[name].chunk(2, dim=sharded[name])[tp_rank]
                else:
                    dist.all_reduce(g)
                    ref = ref_grads[name]
                assert_close(g, ref, f"{what} grad {name}")
    _fsdp_tp_case(paths["llama"], rank)
    _load_save_case(paths, rank)
    # heads that do not split over tp: a local error, before any collective
    bad = AutoModelForCausalLM.from_config(tiny_config("llama", num_key_value_heads=1))
    with pytest.raises(ValueError, match=r"tp=2 must divide .* the kv heads \(1\)"):
        seqpar.hf.apply_tensor_parallel(bad, tp_group)
    with pytest.raises(ValueError, match=r"over 2 ranks and tp=2 .* multiples of 4, got L=6"):
        seqpar.hf.shard_batch(torch.zeros(1, 6, dtype=torch.long), group=sp_group,
                              layout="zigzag", tp_group=tp_group)


def _fsdp_tp_case(path, rank):
    """FSDP2 over the sp dim of an ("sp", "tp") mesh on top of TP-SP: FSDP sums over
    sp; replicated parameters are then summed over tp as well."""
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoModelForCausalLM

    import seqpar
    import seqpar.hf

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("sp", "tp"))
    sp_group, tp_group, tp_rank = mesh.get_group("sp"), mesh.get_group("tp"), rank % 2
    _, ids, labels, pos = batches()[1]
    ref_logits, ref_loss, ref_grads = reference(path, ids, labels, pos)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    seqpar.hf.apply(model, group=sp_group, strategy="ring", layout="zigzag")
    sharded = seqpar.hf.apply_tensor_parallel(model, tp_group)
    seqpar.hf.fully_shard_model(model, mesh["sp"])
    batch = seqpar.hf.shard_batch(ids, labels, group=sp_group, layout="zigzag",
                                  position_ids=pos, tp_group=tp_group)
    out = seqpar.hf.loss(model(**batch.model_kwargs()).logits, batch.labels)
    out.backward_loss.backward()
    assert abs(out.loss - ref_loss) <= 1e-5 * abs(ref_loss)
    for name, p in model.named_parameters():
        g = p.grad.full_tensor()  # summed over sp by FSDP's reduce-scatter
        if name in sharded:
            ref = ref_grads[name].chunk(2, dim=sharded[name])[tp_rank]
        else:
            dist.all_reduce(g, group=tp_group)
            ref = ref_grads[name]
        assert_close(g, ref, f"fsdp+tp grad {name}")


def _load_save_case(paths, rank):
    """Meta-device model, TP-SP + FSDP2, then each rank reads only its region of a
    sharded safetensors checkpoint (bytes read asserted); logits equal the dense
    model's; the gathered export reloads in transformers with identical tensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoConfig, AutoModelForCausalLM

    import seqpar
    import seqpar.hf

    path = paths["llama_sharded"]
    assert len(set(seqpar.hf.weight_files(path).values())) > 1  # really several files
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("sp", "tp"))
    sp_group, tp_group, tp_rank = mesh.get_group("sp"), mesh.get_group("tp"), rank % 2
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    seqpar.hf.apply(model, group=sp_group, strategy="ulysses", layout="zigzag")
    sharded = seqpar.hf.apply_tensor_parallel(model, tp_group)
    seqpar.hf.fully_shard_model(model, mesh["sp"])
    model.to_empty(device="cpu")
    read = seqpar.hf.load_weights(model, path, tp_sharded=sharded, tp_group=tp_group)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # every parameter split over sp (FSDP), the tp-sharded ones over tp as well
    expected = sum(p.numel() * 4 // (2 * (2 if n in sharded else 1))
                   for n, p in dense.named_parameters())
    assert read == expected, (read, expected)
    _, ids, labels, pos = batches()[1]
    ref_logits = dense(input_ids=ids, position_ids=pos, use_cache=False).logits.detach()
    batch = seqpar.hf.shard_batch(ids, labels, group=sp_group, layout="zigzag",
                                  position_ids=pos, tp_group=tp_group)
    logits = model(**batch.model_kwargs()).logits.detach()
    want = seqpar.shard(ref_logits, dim=1, group=sp_group, layout="zigzag")
    assert_close(logits, want.chunk(2, dim=1)[tp_rank], "loaded logits")
    out = paths["export"]
    seqpar.hf.save_weights(model, out, tp_sharded=sharded, tp_group=tp_group)
    if rank == 0:
        again = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        for (n, a), b in zip(again.state_dict().items(), dense.state_dict().values()):
            assert torch.equal(a, b), n
    dist.barrier()


def test_hf_tensor_parallel_fsdp_and_loading_sp2_tp2(spawn, tmp_path):
    from transformers import AutoModelForCausalLM

    paths = save_tiny_models(tmp_path)
    sharded = tmp_path / "llama_sharded"
    AutoModelForCausalLM.from_pretrained(paths["llama"]).save_pretrained(
        sharded, max_shard_size="40KB")
    paths.update(llama_sharded=str(sharded), export=str(tmp_path / "export"))
    spawn(_tp_worker, 4, paths, timeout=600.0)
