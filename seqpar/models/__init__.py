"""Plain-PyTorch models (no torch.distributed): Llama-style decoder, BERT-style encoder."""

from .transformer import (
    SIZES,
    Attention,
    AttentionFn,
    Block,
    Documents,
    FeedForward,
    ModelConfig,
    RMSNorm,
    RotaryEmbedding,
    Transformer,
    apply_rope,
    build_model,
    model_config,
    sdpa_attention,
)

__all__ = [
    "SIZES",
    "Attention",
    "AttentionFn",
    "Block",
    "Documents",
    "FeedForward",
    "ModelConfig",
    "RMSNorm",
    "RotaryEmbedding",
    "Transformer",
    "apply_rope",
    "build_model",
    "model_config",
    "sdpa_attention",
]
