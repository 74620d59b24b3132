"""GPU check of seqpar.hf (``pytest -m gpu`` or ``python tests/test_hf_gpu.py``).

On GPU the local kernels are cuDNN/flash in bf16 and the group is NCCL, so the
HF wiring is re-proven there: a Llama-shaped model (GQA 4:1, head_dim 64) in
bf16 under seqpar on every GPU (up to 2), ring/ulysses/allgather x
zigzag/contiguous, plain and packed, against the same weights in fp32 with
transformers' sdpa on one GPU. Logits and every gradient: relative L2 error
<= 2e-2. Self-contained (no shared test helpers), like tests/test_gpu.py.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

import torch

try:
    import pytest
except ImportError:  # the GPU image may lack pytest
    pytest = None
else:
    pytestmark = pytest.mark.gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 2e-2
LENGTH = 2048


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _worker(folder: str) -> int:
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    import seqpar
    import seqpar.hf
    from seqpar.bench.launch import init_from_env

    d = init_from_env(timeout_s=120)
    failures, notes = [], []
    try:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 512, (1, LENGTH), generator=g)
        docs = [300, 1000, 748]
        pos = torch.cat([torch.arange(n) for n in docs])[None]
        for kind, p in (("plain", None), ("packed", pos)):
            ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                       attn_implementation="sdpa").to(d.device)
            kw = {} if p is None else {"position_ids": p.to(d.device)}
            labels = ids.clone()
            if p is not None:
                labels[p == 0] = -100
            out = ref(input_ids=ids.to(d.device), labels=labels.to(d.device), use_cache=False,
                      **kw)
            out.loss.backward()
            ref_logits = out.logits.detach()
            ref_grads = {n: q.grad for n, q in ref.named_parameters()}
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(d.device)
            for strategy in ("ring", "ulysses", "allgather"):
                for layout in ("zigzag", "contiguous"):
                    label = f"{kind}/{strategy}/{layout}/world{d.world}"
                    seqpar.hf.apply(model, strategy=strategy, layout=layout)
                    model.zero_grad(set_to_none=True)
                    batch = seqpar.hf.shard_batch(ids, labels, layout=layout, position_ids=p)
                    kwargs = {k: (v.to(d.device) if torch.is_tensor(v) else v)
                              for k, v in batch.model_kwargs().items()}
                    logits = model(**kwargs).logits
                    res = seqpar.hf.loss(logits, batch.labels.to(d.device))
                    res.backward_loss.backward()
                    errs = {"logits": _rel(logits.detach(), seqpar.shard(
                        ref_logits, dim=1, layout=layout)), "loss": abs(res.loss - out.loss.item())
                        / out.loss.item()}
                    for n, q in model.named_parameters():
                        grad = q.grad.float()
                        dist.all_reduce(grad)
                        errs[n] = _rel(grad, ref_grads[n])
                    worst = max(errs, key=errs.get)
                    notes.append(f"{label}: worst {worst} {errs[worst]:.2e}")
                    failures += [f"{label}: {n} rel err {e:.3g} > {TOL}"
                                 for n, e in errs.items() if not e <= TOL]
    finally:
        with open(os.path.join(folder, f"rank{d.rank}.json"), "w") as fh:
            json.dump({"failures": failures, "notes": notes}, fh)
        dist.destroy_process_group()
    return 0


def _save_model(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                      vocab_size=512, max_position_embeddings=LENGTH)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)


class HfGpu(unittest.TestCase):
    def test_hf_bf16_parity_on_gpus(self):
        if not torch.cuda.is_available():
            raise unittest.SkipTest("needs CUDA")
        sys.path.insert(0, ROOT)
        from seqpar.bench.launch import spawn

        world = min(torch.cuda.device_count(), 2)
        with tempfile.TemporaryDirectory() as tmp:
            _save_model(Path(tmp))
            code = spawn(_worker, world, tmp, grace_s=30)
            results = [json.loads(f.read_text()) for f in sorted(Path(tmp).glob("rank*.json"))]
        notes = sorted({x for r in results for x in r["notes"]})
        failures = [x for r in results for x in r["failures"]]
        print("\n".join(notes))
        assert code == 0 and len(results) == world, f"exit {code}; {notes}"
        assert not failures, "\n".join(failures)


if __name__ == "__main__":
    unittest.main()
