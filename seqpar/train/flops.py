"""Model FLOPs and MFU of a training run, in the two conventions papers use.

Why two: published long-context figures mix conventions, and a number is only
comparable with one computed the same way.

* **causal-MFU** (the one seqpar reports, issue 17)::

      flops/token = 6 N + 6 n_layers d_model L
      MFU         = flops/token x tokens/s/GPU / peak

  ``N`` counts every parameter except the input embedding (the LM head is
  counted, tied or not: its matmul runs either way); ``6 n_layers d L`` is the
  causal attention (``12 n_layers d L`` for the full square, halved by the mask).
  Recomputation is not counted: checkpointing buys memory, not useful work.

* **hardware convention** (ALST/USP-style "what the GPU executed"): forward +
  backward of the matmuls = 3 x their forward ``2 N``, of the attention 3.5 x its
  causal forward ``2 n_layers d L`` (flash backward recomputes the scores), plus
  one more forward for each recomputed part: the whole block under full
  checkpointing, the block without attention under selective, nothing without.

Note: issue 17's first figures (35.5% at 64K) left the LM head out of ``N``;
with the head counted (as here and in its target) the same run is 36.7%.

Peak: 989 TFLOP/s, H100/H200 dense bf16 (``--peak-tflops`` overrides).
"""

from __future__ import annotations

from ..models import ModelConfig

#: H100 / H200 SXM dense bf16 tensor-core peak, TFLOP/s.
DEFAULT_PEAK_TFLOPS = 989.0


def non_embedding_params(cfg: ModelConfig) -> int:
    """``N``: every parameter but the input embedding; the LM head counts (tied or not)."""
    hd = cfg.head_dim
    attn = cfg.dim * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    mlp = (3 if cfg.mlp == "swiglu" else 2) * cfg.dim * cfg.ffn_dim
    norms = (2 * cfg.n_layers + 1) * cfg.dim
    head = cfg.vocab_size * cfg.dim
    return cfg.n_layers * (attn + mlp) + norms + head


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward attention FLOPs per token, causal: ``6 n_layers d L``
    (``12 n_layers d L`` bidirectional). Linformer attends to ``k`` projected rows
    instead of ``L``: forward ``2 k d`` each for E K, F V, Q K'^T and P V' per layer,
    so ``24 n_layers d k`` with the backward."""
    if getattr(cfg, "attention", "softmax") == "linformer":
        return 24 * cfg.n_layers * cfg.dim * cfg.linformer_k
    return (6 if cfg.causal else 12) * cfg.n_layers * cfg.dim * seq_len


def causal_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """``6 N + 6 n_layers d L`` (module doc); the sequence is one of ``seq_len`` tokens."""
    return 6 * non_embedding_params(cfg) + attention_flops_per_token(cfg, seq_len)


def hardware_flops_per_token(cfg: ModelConfig, seq_len: int, ac_mode: str = "full") -> float:
    """FLOPs the GPU executes per token: 3 x the matmuls' forward, 3.5 x the attention's
    (its backward recomputes the scores), plus the recomputed forward: everything
    (``full``/``offload``), the block without attention (``selective``), nothing
    (``none``)."""
    dense_fwd = 2 * non_embedding_params(cfg)
    head_fwd = 2 * cfg.vocab_size * cfg.dim
    attn_fwd = attention_flops_per_token(cfg, seq_len) / 3
    recompute = {"none": 0.0, "selective": dense_fwd - head_fwd,
                 "full": dense_fwd - head_fwd + attn_fwd,
                 "offload": dense_fwd - head_fwd + attn_fwd}
    if ac_mode not in recompute:
        raise ValueError(f"hardware_flops_per_token: ac_mode {ac_mode!r}: choose one of "
                         f"{tuple(recompute)}")
    return 3 * dense_fwd + 3.5 * attn_fwd + recompute[ac_mode]


def mfu(flops_per_token: float, tokens_per_s_per_gpu: float,
        peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> float:
    """Fraction of the peak: ``flops_per_token x tokens/s/GPU / peak``."""
    if peak_tflops <= 0:
        raise ValueError(f"mfu: peak_tflops must be positive, got {peak_tflops}")
    return flops_per_token * tokens_per_s_per_gpu / (peak_tflops * 1e12)


def mfu_report(cfg: ModelConfig, seq_len: int, tokens_per_s_per_gpu: float, *,
               ac_mode: str = "full", peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> dict:
    """Both conventions for one measured rate (JSON-ready)."""
    causal = causal_flops_per_token(cfg, seq_len)
    hardware = hardware_flops_per_token(cfg, seq_len, ac_mode)
    return {"causal_mfu": mfu(causal, tokens_per_s_per_gpu, peak_tflops),
            "hardware_mfu": mfu(hardware, tokens_per_s_per_gpu, peak_tflops),
            "causal_flops_per_token": causal, "hardware_flops_per_token": hardware,
            "non_embedding_params": non_embedding_params(cfg),
            "peak_tflops": peak_tflops, "ac_mode": ac_mode}
