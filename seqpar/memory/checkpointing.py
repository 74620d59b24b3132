"""Activation checkpointing modes per block: ``none | full | selective | offload``.

Per block and local token, what stays alive from forward to backward (8B, bf16:
``d`` = 4096, ``kv`` = 1024 = n_kv_heads x head_dim):

* ``none``: every intermediate (~ 34 d + 4 ffn values at 8B, see the planner);
* ``full``: the block input ``d`` (non-reentrant ``torch.utils.checkpoint``);
  backward recomputes the whole block, attention included;
* ``selective``: the block input plus what the attention saves for its own
  backward (``q d + k kv + v kv + out d``, fp32 lse per head); backward recomputes
  the norms, projections and MLP but **not** the attention, the one part whose
  cost grows with ``L^2``;
* ``offload``: as ``full``, with the block input in host memory
  (:class:`~seqpar.memory.offload.ActivationOffload`); no GPU bytes per token.

``selective`` is op-selection in the style of torch's
``create_selective_checkpoint_contexts`` / torchtitan's selective AC, at the level
of seqpar's attention callable (an autograd Function, not one aten op): the block
is checkpointed with a ``context_fn`` whose forward context lets the attention
run under identity saved-tensor hooks (its q, k, v, out, lse are stored, not
recomputed) and records its output, and whose recompute context hands that
output back instead of running the attention again. Nothing of the model is
duplicated: the wrapper sits on ``block.attention.attn_fn`` (attribute access,
e.g. ``cu_seqlens``, passes through to the wrapped callable).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .offload import ActivationOffload

MODES = ("none", "full", "selective", "offload")

_state = threading.local()  # .holder: the _Kept of the checkpoint running now, if any


class _Kept:
    """Attention outputs of one checkpointed block call, in call order."""

    def __init__(self):
        self.outputs: deque[tuple[torch.Tensor, bool]] = deque()
        self.recomputing = False


@contextlib.contextmanager
def _holding(kept: _Kept, recomputing: bool):
    previous = getattr(_state, "holder", None)
    _state.holder, kept.recomputing = kept, recomputing
    try:
        yield
    finally:
        _state.holder = previous


#: profiler range around every recomputation (``--profile-step`` counts what runs in it)
RECOMPUTE_RANGE = "seqpar::recompute"


def recompute_contexts():
    """``context_fn`` for ``checkpoint``: nothing in forward, the recomputation inside
    the :data:`RECOMPUTE_RANGE` profiler range (free when no profiler runs)."""
    return contextlib.nullcontext(), torch.profiler.record_function(RECOMPUTE_RANGE)


@contextlib.contextmanager
def _recomputing(kept: _Kept):
    with torch.profiler.record_function(RECOMPUTE_RANGE), _holding(kept, True):
        yield


def _selective_contexts():
    """``context_fn`` for ``checkpoint``: one fresh holder shared by both contexts."""
    kept = _Kept()
    return _holding(kept, False), _recomputing(kept)


class AttentionWrapper:
    """An attention callable around ``inner`` that reads and writes its attributes
    through (strategy, group...), so wrappers stack; subclasses define ``__call__``."""

    def __init__(self, inner):
        object.__setattr__(self, "inner", inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)


class KeptAttention(AttentionWrapper):
    """Wraps an attention callable so that selective checkpointing keeps its result."""

    @torch.compiler.disable  # never traced (--compile): it reads this thread's holder
    def __call__(self, q, k, v, causal, **kwargs):
        return kept_call(self.inner, q, k, v, causal, **kwargs)  # kwargs: per-batch documents


def kept_call(fn, *args, **kwargs) -> torch.Tensor:
    """``fn(*args, **kwargs)`` (one tensor out), kept by an enclosing selective checkpoint.

    Outside a selective checkpoint: a plain call. Inside its forward: ``fn`` runs with
    its saved tensors stored (not checkpoint placeholders) and its output is recorded;
    inside its recompute: the recorded output is returned and ``fn`` does not run.
    Any attention callable can route through this (:class:`KeptAttention` for seqpar's
    model, :mod:`seqpar.hf.attention` for Hugging Face models)."""
    kept = getattr(_state, "holder", None)
    if kept is None:  # not inside a selective checkpoint: plain call
        return fn(*args, **kwargs)
    if kept.recomputing:
        if not kept.outputs:
            raise RuntimeError("selective checkpoint: the recompute called attention more "
                               "often than the forward did")
        # the same value, needing a gradient as in forward: the ops after it then
        # save what they saved in forward (the checkpoint checks the count)
        out, needs_grad = kept.outputs.popleft()
        return out.detach().requires_grad_(needs_grad)
    # store what the attention saves for its backward (not a checkpoint placeholder)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        out = fn(*args, **kwargs)
    kept.outputs.append((out.detach(), out.requires_grad))
    return out


def _wrap(block: nn.Module, mode: str, offload: ActivationOffload | None,
          keep_attention: bool = True) -> None:
    """Checkpoint ``block.forward`` in ``mode``. ``keep_attention=False``: the block's
    attention already routes through :func:`kept_call` (HF models), so selective mode
    does not wrap ``block.attention.attn_fn``."""
    inner = block.forward

    if mode == "full":
        def forward(*args, **kwargs):
            return checkpoint(inner, *args, use_reentrant=False, context_fn=recompute_contexts,
                              **kwargs)
    elif mode == "selective":
        def forward(*args, **kwargs):
            attn = block.attention if keep_attention else None
            if attn is not None and not isinstance(attn.attn_fn, KeptAttention):
                attn.attn_fn = KeptAttention(attn.attn_fn)  # attention injected after us
            return checkpoint(inner, *args, use_reentrant=False,
                              context_fn=_selective_contexts, **kwargs)
    else:  # offload
        def forward(*args, **kwargs):
            with offload.hooks():
                return checkpoint(inner, *args, use_reentrant=False,
                                  context_fn=recompute_contexts, **kwargs)

    block.forward = forward
    block._seqpar_ac = mode


def layer_modes(n_layers: int, mode: str, offload_layers: int | None = None) -> list[str]:
    """The mode of each layer: the first ``offload_layers`` offloaded, the rest ``mode``
    (``mode="offload"`` with ``offload_layers=None``: every layer)."""
    if mode not in MODES:
        raise ValueError(f"activation checkpointing mode {mode!r}: choose one of {MODES}")
    if offload_layers is None:
        offload_layers = n_layers if mode == "offload" else 0
    if not 0 <= offload_layers <= n_layers:
        raise ValueError(f"offload_layers={offload_layers} must be in [0, {n_layers}] "
                         f"(the model has {n_layers} layers)")
    rest = "full" if mode == "offload" else mode
    return ["offload"] * offload_layers + [rest] * (n_layers - offload_layers)


def apply_activation_checkpointing(model: nn.Module, mode: str = "full", *,
                                   offload_layers: int | None = None,
                                   offload: ActivationOffload | None = None,
                                   layers: nn.ModuleList | None = None,
                                   keep_attention: bool = True
                                   ) -> ActivationOffload | None:
    """Checkpoint every block of ``model.layers`` per :func:`layer_modes`, in place
    (parameter names unchanged). Returns the :class:`ActivationOffload` used by
    offloaded layers (its ``stats`` count what moved), or ``None`` when none is.

    Apply before FSDP2's ``fully_shard`` (its hooks then wrap the checkpoint, as with
    torch's own ``checkpoint_wrapper``). ``layers``: the blocks when they are not
    ``model.layers`` (HF models: ``model.model.layers``, with ``keep_attention=False``
    since their attention function calls :func:`kept_call` itself).
    """
    layers = model.layers if layers is None else layers
    modes = layer_modes(len(layers), mode, offload_layers)
    if "offload" in modes and offload is None:
        offload = ActivationOffload()
    for i, (block, m) in enumerate(zip(layers, modes, strict=True)):
        if getattr(block, "_seqpar_ac", None) is not None:
            raise ValueError(f"apply_activation_checkpointing: layer {i} is already "
                             f"checkpointed ({block._seqpar_ac})")
        if m != "none":
            _wrap(block, m, offload, keep_attention)
    return offload if "offload" in modes else None
