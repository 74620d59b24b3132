"""seqpar's memory options (docs/memory.md) on a Hugging Face causal LM.

The native model's options are model-agnostic modules (:mod:`seqpar.memory`);
this module points them at the HF module names of the supported families, so
``seqpar train --hf`` accepts every memory option ``--model`` has:

* **tiled MLP** (``mlp_chunk``): every decoder layer's ``.mlp`` runs over sequence
  tiles, recomputed tile by tile (:func:`seqpar.memory.tiled_mlp.tile_module`);
* **activation checkpointing** ``none | full | selective | offload`` over the
  decoder layers (:func:`seqpar.memory.checkpointing.apply_activation_checkpointing`
  with ``layers=model.model.layers``). Selective mode keeps the attention's result
  because :func:`seqpar.hf.attention.seqpar_attention_forward` routes its work
  through :func:`~seqpar.memory.checkpointing.kept_call`; transformers' own
  ``gradient_checkpointing_enable`` is not used;
* **chunked LM head + loss** (``loss_chunk``): :func:`enable_head_loss` gives the
  model's forward a ``head_loss=`` argument (per batch, like the native model's):
  the forward then runs the decoder, hands the final norm's output ``(B, Ls, d)``
  and ``lm_head.weight`` to ``head_loss`` and returns its result, so the
  ``(B, Ls, V)`` logits never exist whole. It runs inside the root module's
  ``__call__``, so FSDP2's root unit gathers (and reduce-scatters the gradients
  of) the embedding, final norm and head as for a plain forward;
* **optimizer offload**: :func:`seqpar.hf.fully_shard_model`'s ``offload_optimizer``;
* **the planner**: :func:`planner_config` is the HF config's shape as a seqpar
  :class:`~seqpar.models.ModelConfig`, which :mod:`seqpar.memory.planner` takes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..memory.checkpointing import apply_activation_checkpointing
from ..memory.offload import ActivationOffload
from ..memory.tiled_mlp import tile_module
from .families import check_supported, decoder_layers


def apply_memory(model: nn.Module, *, mlp_chunk: int = 0, activation_checkpointing: str = "none",
                 offload_layers: int | None = None) -> ActivationOffload | None:
    """Tile the MLPs (``mlp_chunk`` tokens, 0 = off), checkpoint the decoder layers
    (``activation_checkpointing`` mode; the first ``offload_layers`` offloaded with
    ``"offload"``, default all) and enable ``head_loss=``, in place (parameter names
    unchanged). Apply after :func:`seqpar.hf.apply` and tensor parallelism, before
    :func:`seqpar.hf.fully_shard_model`. Returns the :class:`ActivationOffload` of
    offloaded layers (its ``stats``), or ``None``."""
    layers = decoder_layers(model)
    if mlp_chunk < 0:
        raise ValueError(f"mlp_chunk must be >= 0 tokens, got {mlp_chunk}")
    if mlp_chunk:
        for i, layer in enumerate(layers):
            mlp = getattr(layer, "mlp", None)
            if mlp is None:
                raise ValueError(f"{type(layer).__name__} (layer {i}) has no .mlp to tile")
            if any(hasattr(p, "device_mesh") for p in mlp.parameters()):
                raise ValueError(f"mlp chunk {mlp_chunk}: layer {i}'s MLP is tensor-parallel "
                                 f"(its sequence reduce-scatter cannot run per tile); use tp=1")
            tile_module(mlp, mlp_chunk)
    offload = None
    if activation_checkpointing not in ("none", None, False) or offload_layers:
        mode = {True: "full"}.get(activation_checkpointing, activation_checkpointing)
        offload = apply_activation_checkpointing(model, mode or "none",
                                                 offload_layers=offload_layers,
                                                 layers=layers, keep_attention=False)
    enable_head_loss(model)
    return offload


def enable_head_loss(model: nn.Module) -> nn.Module:
    """Give ``model``'s forward an optional ``head_loss(hidden, head_weight)`` argument
    (idempotent). Without it the forward is transformers' own."""
    check_supported(model.config)
    if getattr(model, "_seqpar_head_loss", False):
        return model
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: a chunked loss over an LM head with a bias "
                         "is not supported")
    inner = model.forward
    base = model.model

    def forward(*args, head_loss: Callable | None = None, **kwargs):
        if head_loss is None:
            return inner(*args, **kwargs)
        hidden = base(*args, **kwargs).last_hidden_state  # (B, Ls, d) after the final norm
        return head_loss(hidden, head.weight)

    model.forward = forward
    model._seqpar_head_loss = True
    return model


def planner_config(config):
    """The HF ``config``'s shape as the :class:`~seqpar.models.ModelConfig` the memory
    planner models (a Llama-style decoder: hidden, layers, heads, kv heads, ffn,
    vocabulary, tied embeddings). A ``head_dim`` other than ``hidden / heads``
    (some Qwen3 sizes) is approximated by ``hidden / heads``."""
    from ..models import ModelConfig

    check_supported(config)
    heads = config.num_attention_heads
    return ModelConfig(dim=config.hidden_size, n_layers=config.num_hidden_layers,
                       n_heads=heads, n_kv_heads=getattr(config, "num_key_value_heads", None)
                       or heads, ffn_dim=config.intermediate_size,
                       vocab_size=config.vocab_size,
                       tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)))

