"""seqpar for Hugging Face causal LMs (Llama, Mistral, Qwen2, Qwen3).

Five lines in a training script (see docs/hf.md)::

    model = AutoModelForCausalLM.from_pretrained(path)
    seqpar.hf.apply(model, group=group, strategy="ring", layout="zigzag")
    batch = seqpar.hf.shard_batch(input_ids, labels, group=group, layout="zigzag")
    out = seqpar.hf.loss(model(**batch.model_kwargs()).logits, batch.labels, group)
    out.backward_loss.backward()

Importing this package registers ``attn_implementation="seqpar"`` with
transformers (``pip install seqpar[hf]``).
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("seqpar.hf needs transformers: pip install 'seqpar[hf]'") from e

from .attention import (
    ATTN_IMPLEMENTATION,
    CU_SEQLENS_KWARG,
    apply,
    attention_config,
    register,
    seqpar_attention_forward,
)
from .batch import ShardedBatch, cu_seqlens_from_position_ids, shard_batch, shift_labels
from .families import SUPPORTED_MODEL_TYPES, attention_modules, check_supported, decoder_layers
from .folder import check_model_folder, check_tokenizer
from .fsdp import fully_shard_model
from .loss import loss
from .tensor_parallel import apply_tensor_parallel
from .weights import load_weights, save_weights, weight_files

register()

__all__ = [
    "ATTN_IMPLEMENTATION",
    "CU_SEQLENS_KWARG",
    "SUPPORTED_MODEL_TYPES",
    "ShardedBatch",
    "apply",
    "apply_tensor_parallel",
    "attention_config",
    "attention_modules",
    "check_model_folder",
    "check_supported",
    "check_tokenizer",
    "cu_seqlens_from_position_ids",
    "decoder_layers",
    "fully_shard_model",
    "load_weights",
    "loss",
    "register",
    "save_weights",
    "seqpar_attention_forward",
    "shard_batch",
    "shift_labels",
    "weight_files",
]
