"""A Llama-style decoder and a BERT-style encoder in plain PyTorch.

The model knows nothing of ``torch.distributed``: every module works on the
tokens it is handed (a rank's shard of the sequence) and attention is an
injected callable ``attn(q, k, v, causal) -> out`` so that
:func:`seqpar.parallel.parallelize` can swap in sequence-parallel attention
from outside. Positions for RoPE are passed in (global positions of the local
tokens), because under sequence parallelism a rank's tokens are not
``0..L_local-1``. Packed documents are per-batch data and travel the same way:
``model(tokens, position_ids, documents=...)`` hands them through every block
to the attention callable as ``attn(q, k, v, causal, documents=...)`` (only
when given, so a callable for unpacked data needs just the four arguments).

Projection widths are read from the weights at run time (``view(b, l, -1, D)``)
so that tensor parallelism can replace a linear by its shard without the model
knowing the number of local heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linformer import LinformerProjection

#: ``attn(q, k, v, causal, documents=None) -> out``; ``documents`` is passed only when given.
AttentionFn = Callable[..., torch.Tensor]
#: Packed documents: one int tensor of *global* boundaries per local sequence
#: (``cu_seqlens``: first 0, last the global length L), or ``None``.
Documents = list[torch.Tensor] | None
#: ``head_loss(hidden (B, L, dim), head_weight (V, dim))`` -> anything (a loss output).
HeadLoss = Callable[[torch.Tensor, torch.Tensor], object]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; ``SIZES`` names the usual ones."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int = 264
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    tie_embeddings: bool = False
    #: "decoder" (causal LM, Llama) or "encoder" (bidirectional, BERT-style MLM).
    arch: str = "decoder"
    #: "swiglu" (Llama) or "gelu" (BERT); "rmsnorm" (Llama) or "layernorm" (BERT).
    mlp: str = "swiglu"
    norm: str = "rmsnorm"
    #: "softmax" (exact attention) or "linformer" (keys/values projected along the
    #: sequence to ``linformer_k`` rows by E/F of ``(linformer_k, max_seq_len)``; encoders only)
    attention: str = "softmax"
    linformer_k: int = 0
    max_seq_len: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim={self.dim} not divisible by n_heads={self.n_heads}")
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} not a multiple of "
                            f"n_kv_heads={self.n_kv_heads}")
        if (self.dim // max(self.n_heads, 1)) % 2:
            problems.append(f"head_dim={self.dim // max(self.n_heads, 1)} must be even (RoPE)")
        if self.arch not in ("decoder", "encoder"):
            problems.append(f"arch={self.arch!r}: choose 'decoder' or 'encoder'")
        if self.mlp not in ("swiglu", "gelu"):
            problems.append(f"mlp={self.mlp!r}: choose 'swiglu' or 'gelu'")
        if self.norm not in ("rmsnorm", "layernorm"):
            problems.append(f"norm={self.norm!r}: choose 'rmsnorm' or 'layernorm'")
        problems += self._linformer_problems()
        if problems:
            raise ValueError("ModelConfig: " + "; ".join(problems))

    def _linformer_problems(self) -> list[str]:
        if self.attention == "softmax":
            return []
        if self.attention != "linformer":
            return [f"attention={self.attention!r}: choose 'softmax' or 'linformer'"]
        problems = []
        if self.arch != "encoder":
            problems.append(f"attention='linformer' needs a bidirectional encoder (bert-*), "
                            f"got arch={self.arch!r}: Linformer is not defined for causal "
                            f"decoders")
        if self.linformer_k <= 0 or self.max_seq_len <= 0:
            problems.append(f"attention='linformer' needs linformer_k > 0 and max_seq_len > 0, "
                            f"got linformer_k={self.linformer_k}, "
                            f"max_seq_len={self.max_seq_len}")
        elif self.linformer_k > self.max_seq_len:
            problems.append(f"linformer_k={self.linformer_k} is larger than the sequence "
                            f"length max_seq_len={self.max_seq_len}")
        return problems

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def causal(self) -> bool:
        return self.arch == "decoder"

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        hd = self.head_dim
        attn = self.dim * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = (3 if self.mlp == "swiglu" else 2) * self.dim * self.ffn_dim
        norms = (2 * self.n_layers + 1) * self.dim
        emb = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        if self.attention == "linformer":
            attn += 2 * self.linformer_k * self.max_seq_len  # E and F
        return self.n_layers * (attn + mlp) + norms + emb


#: Named sizes. ``8b`` is Llama-3-8B's shape, ``1b`` Llama-3.2-1B's; the vocabulary
#: comes from the tokenizer (``vocab_size`` is overridden by the data).
SIZES: dict[str, dict] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176,
                 tie_embeddings=True),
    "125m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048,
                 tie_embeddings=True),
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
               tie_embeddings=True),
    "8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336),
    # BERT-style bidirectional encoders (masked-token objective)
    "bert-tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=256,
                      arch="encoder", mlp="gelu", norm="layernorm", tie_embeddings=True,
                      rope_theta=10_000.0),
    "bert-base": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_dim=3072,
                      arch="encoder", mlp="gelu", norm="layernorm", tie_embeddings=True,
                      rope_theta=10_000.0),
    "bert-large": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, ffn_dim=4096,
                       arch="encoder", mlp="gelu", norm="layernorm", tie_embeddings=True,
                       rope_theta=10_000.0),
}


def model_config(name: str, **overrides) -> ModelConfig:
    """The named size with ``overrides`` (e.g. ``vocab_size``) applied."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; choose one of {tuple(SIZES)}")
    known = {f.name for f in fields(ModelConfig)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown ModelConfig fields {sorted(bad)}")
    return replace(ModelConfig(**SIZES[name]), **overrides)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                   documents: Documents = None) -> torch.Tensor:
    """Default attention: local SDPA over the tokens this process holds.

    q ``(B, Hq, L, D)``, k/v ``(B, Hkv, L, D)`` -> ``(B, Hq, L, D)``. With
    ``documents`` (one ``cu_seqlens`` per sequence, covering exactly these L
    tokens: this is the one-process path) a query sees only its own document.
    """
    gqa = q.shape[1] != k.shape[1]
    if documents is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    b, _, length, _ = q.shape
    if len(documents) != b:
        raise ValueError(f"documents has {len(documents)} entries for a batch of {b}")
    pos = torch.arange(length, device=q.device)
    masks = []
    for cu in documents:
        cu = cu.to(q.device)
        if int(cu[0]) != 0 or int(cu[-1]) != length:
            raise ValueError(f"sdpa_attention: documents {cu.tolist()} must run from 0 to the "
                             f"local length {length} (sharded tokens need seqpar attention)")
        doc = torch.bucketize(pos, cu[1:], right=True)  # (L,) document id of each position
        masks.append(doc[:, None] == doc[None, :])  # (L, L): same document
    mask = torch.stack(masks)[:, None]  # B x (L, L) -> (B, 1, L, L)
    if causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back (Llama)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.dim, cfg.norm_eps)
    return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=False)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the given (global) positions.

    A module of its own so that tensor parallelism can gather its output once
    per forward (the tables must match the sequence length inside the TP region).
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        self.register_buffer("inv_freq", inv.float(), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``position_ids (L,)`` int -> cos, sin ``(L, D)`` fp32 (rotate-half layout)."""
        # (L,) x (D/2,) -> (L, D/2); fp64 keeps positions ~1e6 exact before the cast
        angles = position_ids.double()[:, None] * self.inv_freq.double()[None, :]
        angles = torch.cat([angles, angles], dim=-1)  # (L, D/2) -> (L, D)
        return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (B, H, L, D)`` by the angles in ``cos``/``sin (L, D)``; keeps x's dtype."""
    half = x.shape[-1] // 2
    # (B, H, L, D) -> two (B, H, L, D/2) halves -> (-x2, x1)
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    xf, rf = x.float(), rotated.float()
    return (xf * cos + rf * sin).to(x.dtype)


class Attention(nn.Module):
    """GQA self-attention with RoPE; the attention itself is ``self.attn_fn``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hd = cfg.head_dim
        self.head_dim = hd
        self.causal = cfg.causal
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)
        self.attn_fn: AttentionFn = sdpa_attention
        #: Linformer's E/F (seqpar.models.linformer), or None for softmax attention
        self.linformer = (LinformerProjection(cfg.linformer_k, cfg.max_seq_len)
                          if cfg.attention == "linformer" else None)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                documents: Documents = None) -> torch.Tensor:
        b, length, _ = x.shape
        cos, sin = rope
        # (B, L, H*D) -> (B, L, H, D) -> (B, H, L, D); H = local heads under TP
        q = self.wq(x).view(b, length, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, length, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, length, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.linformer is not None:
            if documents is not None:
                raise ValueError("Linformer attention does not support packed documents")
            # (B, Hkv, L, D) -> (B, Hkv, k, D): this rank's partial sum under SP
            k, v = self.linformer(k, v)
        if documents is None:
            out = self.attn_fn(q, k, v, self.causal)  # (B, Hq, L, D)
        else:
            out = self.attn_fn(q, k, v, self.causal, documents=documents)
        # (B, Hq, L, D) -> (B, L, Hq, D) -> (B, L, Hq*D)
        out = out.transpose(1, 2).reshape(b, length, -1)
        return self.wo(out)


class FeedForward(nn.Module):
    """SwiGLU (``w2(silu(w1 x) * w3 x)``) or GELU (``w2(gelu(w1 x))``) MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        if cfg.mlp == "swiglu":
            self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``h + mlp(norm(h))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = make_norm(cfg)
        self.attention = Attention(cfg)
        self.ffn_norm = make_norm(cfg)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                documents: Documents = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, documents)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Token ids ``(B, L_local)`` + global positions ``(L_local,)`` (+ packed documents)
    -> ``(B, L_local, V)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2/Llama-style init: N(0, 0.02), residual projections scaled by depth.

        Uses the global RNG, so a fixed ``torch.manual_seed`` gives the same
        weights in every process (the SP-parity tests rely on that).
        """
        std = 0.02
        nn.init.normal_(self.tok_embeddings.weight, std=std)
        for block in self.layers:
            for lin in (block.attention.wq, block.attention.wk, block.attention.wv,
                        block.feed_forward.w1):
                nn.init.normal_(lin.weight, std=std)
            if hasattr(block.feed_forward, "w3"):
                nn.init.normal_(block.feed_forward.w3.weight, std=std)
            out_std = std / math.sqrt(2 * self.cfg.n_layers)
            nn.init.normal_(block.attention.wo.weight, std=out_std)
            nn.init.normal_(block.feed_forward.w2.weight, std=out_std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.output.weight, std=std / math.sqrt(2))
        for block in self.layers:  # after the rest: softmax models draw the same weights
            if block.attention.linformer is not None:
                block.attention.linformer.init_weights(self.cfg.max_seq_len)

    def set_attention(self, attn_fn: AttentionFn) -> None:
        """Inject the attention callable used by every layer."""
        for block in self.layers:
            block.attention.attn_fn = attn_fn

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor,
                documents: Documents = None, head_loss: HeadLoss | None = None):
        """``tokens (B, L)``, ``position_ids (L,)`` global positions -> ``(B, L, V)`` logits.

        ``documents``: packed data's global ``cu_seqlens``, one per local sequence;
        attention never crosses a document boundary. ``head_loss(hidden, head_weight)``
        (e.g. a chunked loss that never builds the logits) replaces the head: its
        result is returned. It runs inside this forward so the head weight is the
        full one under FSDP2 (the callable, not the model, holds any process group).
        """
        if position_ids.dim() != 1 or position_ids.shape[0] != tokens.shape[1]:
            raise ValueError(f"position_ids must be (L,) = ({tokens.shape[1]},), "
                             f"got {tuple(position_ids.shape)}")
        h = self.tok_embeddings(tokens)  # (B, L, dim)
        rope = self.rope(position_ids)  # 2 x (L, head_dim)
        for block in self.layers:
            h = block(h, rope, documents=documents)
        if head_loss is not None:
            return head_loss(self.norm(h), self.output.weight)  # hidden (B, L, dim)
        return self.output(self.norm(h))  # (B, L, V)


def build_model(cfg: ModelConfig | str, **overrides) -> Transformer:
    """A model from a config or a size name (``"tiny"``, ``"8b"``, ``"bert-base"``...)."""
    if isinstance(cfg, str):
        cfg = model_config(cfg, **overrides)
    elif overrides:
        cfg = replace(cfg, **overrides)
    return Transformer(cfg)
