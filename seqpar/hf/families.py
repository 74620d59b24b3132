"""Which Hugging Face architectures seqpar runs, and where their parts live.

The supported families share one decoder shape (``model.model.layers[i].self_attn``
calling transformers' attention interface with q ``(B, Hq, L, D)`` and k/v
``(B, Hkv, L, D)``, RoPE from ``position_ids``, causal attention). Anything else
is refused by name: seqpar never falls back to dense attention silently.
"""

from __future__ import annotations

from torch import nn

#: ``config.model_type`` of the families tested against the single-process model.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def check_supported(config) -> None:
    """Raise ``ValueError`` unless ``config`` (a transformers config) is a supported family.

    Cheap and local: call it before any process group work.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        arch = getattr(config, "architectures", None) or [type(config).__name__]
        raise ValueError(
            f"seqpar.hf supports model_type in {SUPPORTED_MODEL_TYPES} "
            f"(Llama, Mistral, Qwen2, Qwen3), got model_type={model_type!r} ({arch[0]})")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"seqpar.hf needs a decoder-only causal LM, got an encoder-decoder "
                         f"{model_type!r} config")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported model (``ForCausalLM`` or its base model)."""
    check_supported(model.config)
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no decoder layers at .model.layers; "
                         f"seqpar.hf supports {SUPPORTED_MODEL_TYPES}")
    return layers


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every decoder layer's ``self_attn`` (the modules transformers passes to the
    attention function), in layer order."""
    mods = [getattr(layer, "self_attn", None) for layer in decoder_layers(model)]
    if any(m is None for m in mods):
        raise ValueError(f"{type(model).__name__}: a decoder layer has no .self_attn")
    return mods
