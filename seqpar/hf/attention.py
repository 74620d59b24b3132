"""``attn_implementation="seqpar"``: transformers' attention interface backed by
``seqpar.attention``.

transformers calls ``fn(module, query, key, value, attention_mask, *, scaling,
dropout, sliding_window=..., **kwargs)`` with query ``(B, Hq, Ls, D)`` and
key/value ``(B, Hkv, Ls, D)`` (GQA heads not yet repeated) and expects
``((B, Ls, Hq, D), weights)`` back. Here ``Ls`` is this rank's shard of the
sequence. Two kinds of configuration reach the function:

* per model, set once by :func:`apply`: strategy, layout and process group, in a
  registry keyed by the attention module (a ProcessGroup cannot live on the
  config: ``save_pretrained`` serialises it);
* per batch, as a forward kwarg that transformers passes through every layer to
  here: ``seqpar_cu_seqlens``, the *global* document boundaries from
  :func:`seqpar.hf.shard_batch` (one tensor for all rows, or one per row).

A matching mask function is registered too: it returns no mask (causality and
documents are seqpar's) and refuses a padding mask, which sharded attention
cannot honour, instead of letting transformers drop it silently.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attention import STRATEGIES, attention
from ..comm import is_hybrid_mesh, seq_rank_size
from ..layout import Layout, get_layout
from ..memory.checkpointing import kept_call
from .families import attention_modules, check_supported

#: The name passed as ``attn_implementation``.
ATTN_IMPLEMENTATION = "seqpar"
#: The forward kwarg carrying global document boundaries (per batch).
CU_SEQLENS_KWARG = "seqpar_cu_seqlens"


@dataclass
class SeqparAttentionConfig:
    """How one model's attention runs: the same for every layer and every batch."""

    strategy: str
    layout: Layout
    group: object
    # problem signatures already checked across ranks: the check (a small
    # all-gather) runs once per shape, not on every layer of every step
    checked: set = field(default_factory=set)


_CONFIGS: weakref.WeakKeyDictionary[nn.Module, SeqparAttentionConfig] = \
    weakref.WeakKeyDictionary()


def apply(model: nn.Module, *, group=None, strategy: str = "ring",
          layout: str | Layout = "zigzag") -> nn.Module:
    """Make ``model`` (a supported HF causal LM) run seqpar attention over ``group``.

    ``group``: ProcessGroup, 1-D DeviceMesh or None (default group); for
    ``strategy="hybrid"`` the 2-D mesh of :func:`seqpar.hybrid_mesh`. Feed the model
    batches from :func:`seqpar.hf.shard_batch` with the same group and layout.
    Idempotent; calling it again replaces the configuration. Returns ``model``.
    It sets ``model.config._attn_implementation``: a config object shared with
    another model (``from_config(cfg)`` twice) switches that one too.
    Raises ``ValueError`` for an unsupported family or strategy (no collectives).
    """
    check_supported(model.config)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if (strategy == "hybrid") != is_hybrid_mesh(group):
        raise ValueError("strategy='hybrid' needs group= the 2-D mesh of seqpar.hybrid_mesh, "
                         "and that mesh needs strategy='hybrid'; got strategy="
                         f"{strategy!r} with a {type(group).__name__} group")
    modules = attention_modules(model)
    for module in modules:
        if not getattr(module, "is_causal", True):
            raise ValueError(f"{type(module).__name__} is not causal; seqpar.hf runs causal LMs")
    register()
    shared = SeqparAttentionConfig(strategy, get_layout(layout), group)  # one check per shape
    for module in modules:
        _CONFIGS[module] = shared
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def attention_config(module: nn.Module) -> SeqparAttentionConfig:
    """The configuration :func:`apply` stored for this attention module."""
    cfg = _CONFIGS.get(module)
    if cfg is None:
        raise ValueError(
            f"attn_implementation='seqpar' on a {type(module).__name__} that seqpar.hf.apply"
            f"(model, group=..., strategy=..., layout=...) has not configured")
    return cfg


def seqpar_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None,
                             scaling: float | None = None, dropout: float = 0.0,
                             sliding_window: int | None = None, softcap: float | None = None,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """The attention function transformers calls for ``attn_implementation="seqpar"``."""
    cfg = attention_config(module)
    cu_seqlens = kwargs.pop(CU_SEQLENS_KWARG, None)
    _refuse_inexact(module, query, attention_mask, dropout, sliding_window, softcap, kwargs, cfg)
    kw = dict(strategy=cfg.strategy, group=cfg.group, causal=True, layout=cfg.layout,
              softmax_scale=scaling)
    if isinstance(cu_seqlens, (list, tuple)):
        if len(cu_seqlens) != query.shape[0]:
            raise ValueError(f"{CU_SEQLENS_KWARG} has {len(cu_seqlens)} entries for a batch of "
                             f"{query.shape[0]} sequences")
        if all(torch.equal(c, cu_seqlens[0]) for c in cu_seqlens[1:]):
            cu_seqlens = cu_seqlens[0]
    dev = query.device.type
    if torch.is_autocast_enabled(dev):
        # as sdpa under autocast: q, k, v in the autocast dtype (RoPE's fp32 tables made q
        # and k fp32 when the hidden states are fp32, v stays in the autocast dtype)
        dt = torch.get_autocast_dtype(dev)
        query, key, value = (t.to(dt) for t in (query, key, value))
    # selective activation checkpointing (seqpar.hf.memory) keeps this result: kept_call
    # is a plain call outside a selective checkpoint
    return kept_call(_sharded_attention, query, key, value, cu_seqlens, cfg, kw), None


def _sharded_attention(query, key, value, cu_seqlens, cfg: SeqparAttentionConfig,
                       kw: dict) -> torch.Tensor:
    if isinstance(cu_seqlens, (list, tuple)):
        # (B, H, Ls, D) -> B x (1, H, Ls, D), each with its own documents -> (B, H, Ls, D)
        out = torch.cat([attention(query[i:i + 1], key[i:i + 1], value[i:i + 1], cu_seqlens=cu,
                                   check=_first(cfg, query, key, "rows"), **kw)
                         for i, cu in enumerate(cu_seqlens)])
    else:
        out = attention(query, key, value, cu_seqlens=cu_seqlens,
                        check=_first(cfg, query, key, cu_seqlens is None), **kw)
    # (B, Hq, Ls, D) -> (B, Ls, Hq, D), the layout transformers reshapes to hidden
    return out.transpose(1, 2).contiguous()


def _first(cfg: SeqparAttentionConfig, q: torch.Tensor, k: torch.Tensor, docs) -> bool:
    key = (tuple(q.shape), tuple(k.shape), q.dtype, docs)
    new = key not in cfg.checked
    cfg.checked.add(key)
    return new


def _refuse_inexact(module, query, attention_mask, dropout, sliding_window, softcap, kwargs,
                    cfg) -> None:
    """Everything seqpar cannot compute exactly is an error, never dense attention."""
    name = type(module).__name__
    if attention_mask is not None:
        raise ValueError(f"{name}: seqpar attention takes no attention_mask (got shape "
                         f"{tuple(attention_mask.shape)}); pack documents and pass position "
                         "ids to seqpar.hf.shard_batch instead of padding masks")
    if dropout and module.training:
        raise ValueError(f"{name}: attention dropout {dropout} is not supported by seqpar "
                         "(set config.attention_dropout = 0.0)")
    if softcap is not None:
        raise ValueError(f"{name}: attention logit softcapping ({softcap}) is not supported")
    if kwargs.get("is_causal", True) is False or not getattr(module, "is_causal", True):
        raise ValueError(f"{name}: non-causal attention is not supported by seqpar.hf")
    if kwargs.get("s_aux") is not None:
        raise ValueError(f"{name}: attention sinks (s_aux) are not supported by seqpar")
    for local in ("cu_seq_lens_q", "cu_seq_lens_k"):
        if kwargs.get(local) is not None:
            raise ValueError(f"{name}: got {local}; seqpar takes GLOBAL document boundaries as "
                             f"{CU_SEQLENS_KWARG} (seqpar.hf.shard_batch builds it)")
    if sliding_window is not None:
        length = query.shape[2] * seq_rank_size(cfg.group)[1]
        if length > sliding_window:
            raise ValueError(
                f"{name}: sliding window {sliding_window} < sequence length {length}: seqpar "
                "computes full causal attention only (set config.sliding_window = None, or "
                "train on sequences no longer than the window)")


def seqpar_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> None:
    """The mask function for ``"seqpar"``: no mask; a padding mask is an error."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("seqpar attention cannot apply a padding attention_mask; pack "
                         "sequences (position ids restarting at 0 per document) and label "
                         "padding with -100 instead")
    return None


def register() -> None:
    """Register ``"seqpar"`` with transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, seqpar_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, seqpar_mask)
