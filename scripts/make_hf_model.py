"""Write a random-weights Hugging Face Llama folder of a given shape (no downloads).

    python scripts/make_hf_model.py OUT_DIR --shape 8b [--vocab-size 128256]
        [--dtype bfloat16] [--max-shard-size 5GB] [--docs 2000 --data OUT.jsonl]

The folder holds ``config.json``, sharded ``*.safetensors`` with an index and a
word-level tokenizer built in-process with ``tokenizers`` (``w0 .. w{V-3}``,
``[UNK]``, ``[EOS]``: exactly ``--vocab-size`` ids, so ``check_tokenizer`` passes).
Shapes are seqpar's named sizes (``seqpar.models.SIZES``: ``8b`` = Llama-3-8B,
``1b`` = Llama-3.2-1B with tied embeddings), so ``seqpar train --hf OUT_DIR``
and ``seqpar train --model NAME --vocab-size V`` train the same architecture.

Weights are written shard by shard (``safetensors.torch.save_file`` per
``--max-shard-size`` file), so an 8B model needs one shard of host memory. They
are windows at random offsets of one pool of 2^24 normal draws (std 0.02): random
enough to train on for a speed measurement, and an 8B folder is written in about
a minute instead of the minutes 8e9 draws take.
``--data`` writes a ``.jsonl`` of random word documents for the tokenizer.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

#: random values drawn once (2^24: 32 MiB in bf16), windows of which fill every weight
POOL = 1 << 24


def tokenizer(vocab_size: int):
    """A word-level fast tokenizer of exactly ``vocab_size`` ids, EOS included."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = vocab_size - 2
    vocab = {f"w{i}": i for i in range(words)}
    vocab["[UNK]"], vocab["[EOS]"] = words, words + 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


def llama_config(shape: str, vocab_size: int, max_positions: int):
    from transformers import LlamaConfig

    from seqpar.models.transformer import SIZES

    s = SIZES[shape]
    return LlamaConfig(hidden_size=s["dim"], intermediate_size=s["ffn_dim"],
                       num_hidden_layers=s["n_layers"], num_attention_heads=s["n_heads"],
                       num_key_value_heads=s["n_kv_heads"], vocab_size=vocab_size,
                       max_position_embeddings=max_positions, rope_theta=500_000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=bool(s.get("tie_embeddings")),
                       attention_dropout=0.0, bos_token_id=None, eos_token_id=vocab_size - 1,
                       pad_token_id=None, architectures=["LlamaForCausalLM"])


def _tensors(config, dtype: torch.dtype, gen: torch.Generator):
    """``(name, tensor)`` in file order: embeddings, each layer, final norm, head."""
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    hd = d // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd

    # one pool of N(0, 0.02^2) values; each tensor is filled with windows of it at random
    # offsets: drawing 8B normal numbers would take minutes on a CPU, copying is GB/s
    pool = (torch.randn(POOL, generator=gen) * 0.02).to(dtype)

    def rand(*shape):
        out = torch.empty(math.prod(shape), dtype=dtype)
        for s in range(0, out.numel(), POOL // 2):
            k = min(out.numel() - s, POOL // 2)
            off = int(torch.randint(0, POOL - k + 1, (1,), generator=gen))
            out[s:s + k] = pool[off:off + k]
        return out.view(shape)

    yield "model.embed_tokens.weight", rand(v, d)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        yield p + "self_attn.q_proj.weight", rand(q, d)
        yield p + "self_attn.k_proj.weight", rand(kv, d)
        yield p + "self_attn.v_proj.weight", rand(kv, d)
        yield p + "self_attn.o_proj.weight", rand(d, q)
        yield p + "mlp.gate_proj.weight", rand(f, d)
        yield p + "mlp.up_proj.weight", rand(f, d)
        yield p + "mlp.down_proj.weight", rand(d, f)
        yield p + "input_layernorm.weight", torch.ones(d, dtype=dtype)
        yield p + "post_attention_layernorm.weight", torch.ones(d, dtype=dtype)
    yield "model.norm.weight", torch.ones(d, dtype=dtype)
    if not config.tie_word_embeddings:
        yield "lm_head.weight", rand(v, d)


def write_weights(folder: Path, config, dtype: torch.dtype, max_shard_bytes: int,
                  seed: int = 0) -> int:
    """Sharded safetensors + index; returns the total bytes."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    names: list[list[str]] = [[]]
    size = total = 0
    files: list[str] = []
    weight_map: dict[str, str] = {}

    def flush():
        nonlocal size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shards[-1], str(folder / name), metadata={"format": "pt"})
        files.append(name)
        for n in names[-1]:
            weight_map[n] = name
        shards[-1], names[-1], size = {}, [], 0

    for name, t in _tensors(config, dtype, gen):
        nbytes = t.numel() * t.element_size()
        if size and size + nbytes > max_shard_bytes:
            flush()
        shards[-1][name], size, total = t, size + nbytes, total + nbytes
        names[-1].append(name)
    flush()
    # rename to the model-0000i-of-0000n convention of transformers
    n = len(files)
    final = {}
    for i, name in enumerate(files):
        new = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (folder / name).rename(folder / new)
        final[name] = new
    index = {"metadata": {"total_size": total},
             "weight_map": {k: final[v] for k, v in sorted(weight_map.items())}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def _size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    for unit, mult in units.items():
        if text.upper().endswith(unit):
            return int(float(text[:-2]) * mult)
    return int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shape", default="8b", help="a seqpar size name (8b, 1b, 125m, tiny)")
    ap.add_argument("--vocab-size", type=int, default=128256)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--max-shard-size", default="5GB")
    ap.add_argument("--max-positions", type=int, default=131072)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="also write random word documents here (.jsonl)")
    ap.add_argument("--docs", type=int, default=2000, help="documents for --data")
    args = ap.parse_args(argv)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    if args.data:
        gen = torch.Generator().manual_seed(args.seed + 1)
        words = args.vocab_size - 2
        with open(args.data, "w") as f:
            for n in torch.randint(200, 4000, (args.docs,), generator=gen).tolist():
                ids = torch.randint(0, words, (n,), generator=gen).tolist()
                f.write(json.dumps({"text": " ".join(f"w{i}" for i in ids)}) + "\n")
        print(f"wrote {args.data}: {args.docs} documents", flush=True)
    config = llama_config(args.shape, args.vocab_size, args.max_positions)
    config.torch_dtype = args.dtype
    config.save_pretrained(folder)
    tokenizer(args.vocab_size).save_pretrained(folder)
    total = write_weights(folder, config, getattr(torch, args.dtype),
                          _size(args.max_shard_size), args.seed)
    print(f"wrote {folder}: llama {args.shape} shape, vocab {args.vocab_size}, "
          f"{total / 2**30:.2f} GiB of {args.dtype} weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
