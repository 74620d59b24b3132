"""Chunked LM head + cross-entropy: the ``(N, V)`` logits never exist whole.

At Llama-3's vocabulary (V = 128,256) the logits of 64K local tokens take
64K x 128,256 x 4 B = 31 GiB in fp32, more than all block checkpoints of an 8B
model at that length; the PyTorch baseline runs out of memory there. This module
fuses the head matmul with the loss and walks the tokens in chunks of ``chunk``
rows, so only ``chunk x V`` logits are alive at any time.

Which fused linear cross-entropy. Two well-known designs exist:

* *recompute* (Apple's Cut-Cross-Entropy, a checkpointed head): forward keeps
  only the loss; backward recomputes every chunk's logits and then its gradients
  (4 matmuls per chunk instead of 3);
* *gradient-in-forward* (Liger Kernel's ``FusedLinearCrossEntropy``, used by
  ALST): forward computes each chunk's logits, loss **and** its gradients
  ``dH_chunk = dlogits @ W`` and ``dW += dlogits^T @ H_chunk`` at once and keeps
  only ``dH (N, d)`` and ``dW (V, d)``; backward only scales them by the
  incoming gradient (3 matmuls per chunk).

The loss is the last operation of the forward pass: its backward runs right
after, and ``dH``/``dW`` are exactly the tensors that backward must produce
anyway. So gradient-in-forward has the same peak (``dH + dW + one chunk``) as
recompute, and is faster by the recomputed matmul; we use it. ``dW`` is summed
in fp32 over chunks (one rounding to the weight's dtype at the end), the softmax
is fp32, and the gradient of a chunk is cast to the compute dtype before its
matmuls, as the unfused ``head -> .float() -> cross_entropy`` graph does.

SP-exact (see :mod:`seqpar.train.loss`): each rank backpropagates
``local_sum / global_count``. The global count depends only on labels, so it
is all-reduced *before* the chunks run and the gradients computed in forward
are already those of the rank's share; a second all-reduce of
``(sum, correct)`` gives the reported global values.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..data import IGNORE_INDEX
from ..train.loss import LossOutput


def _validate(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              labels: torch.Tensor, chunk: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden (N, d) and weight (V, d) needed, got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"linear_cross_entropy: labels {tuple(labels.shape)} must be "
                         f"(N,) = ({hidden.shape[0]},)")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"linear_cross_entropy: bias {tuple(bias.shape)} must be "
                         f"(V,) = ({weight.shape[0]},)")
    if chunk <= 0:
        raise ValueError(f"linear_cross_entropy: chunk must be a positive number of tokens, "
                         f"got {chunk}")


class LinearCrossEntropy(torch.autograd.Function):
    """``scale * Σ_i CE(hidden_i @ weight^T + bias, labels_i)`` over labelled tokens.

    Returns ``(loss, stats)``: ``loss`` a 0-d fp32 (fp64 for fp64 inputs) tensor (differentiable in
    hidden, weight, bias), ``stats`` ``(2,)`` float64 ``[unscaled sum, correct]``
    (not differentiable). Gradients are computed in forward (module doc) and
    multiplied by the incoming gradient in backward (in place: backward runs once).
    ``scale`` is a float or a 0-d tensor (the SP-exact ``1 / global count``, left on the
    device so that the step never waits for it). No host sync anywhere.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk: int, scale: float,
                ignore_index: int):
        # the head matmul's dtype: autocast's when it is on (as for an nn.Linear head),
        # else the hidden states' (bf16 parameters under FSDP2 mixed precision)
        dev = hidden.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
        with torch.autocast(dev, enabled=False):
            return LinearCrossEntropy._run(ctx, hidden, weight, bias, labels, chunk, scale,
                                           ignore_index, cdt)

    @staticmethod
    def _run(ctx, hidden, weight, bias, labels, chunk, scale, ignore_index, cdt):
        n = hidden.shape[0]
        acc = torch.promote_types(cdt, torch.float32)  # softmax dtype: fp32, fp64 for fp64
        w = weight.to(cdt)
        b = None if bias is None else bias.to(cdt)
        need_w = weight.requires_grad
        need_h = hidden.requires_grad
        dh = torch.empty_like(hidden) if need_h else None  # (N, d)
        # (V, d) fp32 running sum of the weight gradient; one rounding at the end
        dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        db = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) \
            if bias is not None and bias.requires_grad else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        correct = torch.zeros((), dtype=torch.float64, device=hidden.device)
        # every chunk runs, labelled or not (unlabelled rows get exact zero gradients from
        # the mask): skipping a chunk would need its labels on the host, a sync per step
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            h = hidden[s:e].to(cdt)  # (c, d)
            tgt = labels[s:e]  # (c,)
            mask = tgt != ignore_index
            logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())  # (c, V) in cdt
            lf = logits.to(acc)  # (c, V) fp32 (a copy only when cdt is not fp32)
            del logits
            lse = torch.logsumexp(lf, dim=-1)  # (c,)
            safe = torch.where(mask, tgt, torch.zeros_like(tgt))  # (c,) valid gather index
            picked = lf.gather(1, safe[:, None]).squeeze(1)  # (c,)
            total += torch.where(mask, lse - picked, torch.zeros_like(lse)).sum().double()
            correct += ((lf.argmax(-1) == tgt) & mask).sum().double()
            # softmax - onehot, scaled, zero on ignored rows: d(scale * CE)/d logits
            grad = lf.sub_(lse[:, None]).exp_()  # (c, V) in place of the fp32 logits
            rows = torch.arange(e - s, device=grad.device)
            grad[rows, safe] -= mask.to(grad.dtype)
            grad.mul_((mask.to(grad.dtype) * _as(scale, grad))[:, None])
            g = grad.to(cdt)  # (c, V): the dtype the unfused head's backward would see
            del grad, lf
            if dh is not None:
                dh[s:e] = g @ w  # (c, V) @ (V, d) -> (c, d), cast to hidden's dtype
            if dw is not None:
                part = g.t() @ h  # (V, c) @ (c, d) -> (V, d)
                dw += part
                del part
            if db is not None:
                db += g.sum(0, dtype=acc)
        ctx.save_for_backward(
            dh,
            None if dw is None else dw.to(weight.dtype),
            None if db is None else db.to(bias.dtype))
        loss = (total * _as(scale, total)).to(acc)
        stats = torch.stack([total, correct])  # (2,) float64
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if getattr(ctx, "used", False):
            raise RuntimeError("linear_cross_entropy: backward ran twice through the same "
                               "graph (retain_graph); its gradients are scaled in place")
        ctx.used = True
        dh, dw, db = ctx.saved_tensors

        def scaled(t):
            # in place, without asking the host whether grad_loss is 1 (a sync): x1 is exact
            return None if t is None else t.mul_(grad_loss.to(t.dtype))

        return scaled(dh), scaled(dw), scaled(db), None, None, None, None


def _as(scale: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """``scale`` in ``like``'s dtype when it is a tensor (a float is cast by the op)."""
    return scale.to(like.dtype) if isinstance(scale, torch.Tensor) else scale


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         bias: torch.Tensor | None = None, chunk: int = 4096,
                         scale: float | torch.Tensor = 1.0, ignore_index: int = IGNORE_INDEX
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale * Σ CE, stats)`` of the head ``hidden @ weight^T + bias`` over ``chunk``-row
    pieces; ``stats`` = float64 ``[unscaled sum, correct predictions]``.

    ``hidden (N, d)`` (its dtype is the compute dtype of the head), ``weight (V, d)``,
    ``bias (V,)``, ``labels (N,)`` with ``ignore_index`` for unlabelled tokens.
    """
    _validate(hidden, weight, bias, labels, chunk)
    if not isinstance(scale, torch.Tensor):
        scale = float(scale)
    return LinearCrossEntropy.apply(hidden, weight, bias, labels, int(chunk), scale,
                                    int(ignore_index))


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, group=group)
    return t


def chunked_sp_exact_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          group=None, chunk: int = 4096, *, bias: torch.Tensor | None = None,
                          ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """:func:`seqpar.train.loss.sp_exact_loss` of ``hidden @ weight^T (+ bias)`` without
    ever building the logits.

    ``hidden (B, L_local, d)`` or ``(N, d)`` (the final norm's output), ``weight (V, d)``
    (the LM head; a tied embedding works), ``labels`` of the same leading shape.
    ``group`` holds every rank with part of the global batch (``None``: the default
    group, or one process). Two tiny all-reduces: the labelled-token count before
    the chunks (the gradients need it), ``(sum, correct)`` after.
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"chunked_sp_exact_loss: hidden {tuple(hidden.shape)} and labels "
                         f"{tuple(labels.shape)} disagree on the token dims")
    flat_h = hidden.reshape(-1, hidden.shape[-1])  # (B, L, d) -> (B*L, d)
    target = labels.reshape(-1)  # (B, L) -> (B*L,)
    _validate(flat_h, weight, bias, target, chunk)
    count = _all_reduce((target != ignore_index).sum().double(), group)
    scale = 1.0 / count.clamp(min=1.0)  # 0-d float64 on the device: no host sync
    local, stats = linear_cross_entropy(flat_h, weight, target, bias=bias, chunk=chunk,
                                        scale=scale, ignore_index=ignore_index)
    total, n_correct = _all_reduce(stats.clone(), group).unbind()
    return LossOutput(backward_loss=local, stats=torch.stack([total, count, n_correct]))
