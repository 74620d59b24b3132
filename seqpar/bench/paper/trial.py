"""One trial of one configuration: build BERT, wire SP or TP over ``P`` ranks, run a
few forward + backward + AdamW steps, and report the peak memory per GPU and the
throughput, or that it ran out of memory.

Both sides do the same work: the same model and weights (seeded), the same
batch, the same masked-token loss (BERT's MLM head on 15% of positions, computed
through the model's ``head_loss`` so no full logits exist), the same activation
checkpointing and the same optimizer. Only the parallel wiring differs:

* ``rsa`` / ``ring`` / ``ulysses``: sequence parallelism, each rank its contiguous
  ``L/P`` tokens, parameters replicated, gradients summed over the group;
* ``tp``: plain Megatron TP (:mod:`.megatron`), whole sequence on every rank;
* ``tp-sp``: Megatron TP with sequence parallelism (seqpar's TP-SP).

Ranks outside the trial's ``P`` take no part (their group is a prefix of the
world); the outcome is agreed over the whole world so every rank takes the same
next step (:func:`seqpar.bench.outcome.guarded`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ...comm.compat import all_gather_flat
from ...comm.groups import group_rank_size
from ...models import build_model, model_config
from ...parallel.gradients import all_reduce_grads
from ...parallel.parallel_dims import ParallelDims
from ...parallel.parallelize import SequenceParallelAttention, apply_activation_checkpointing
from ..agree import all_max
from ..launch import Dist
from ..outcome import classify
from .megatron import apply_megatron_tp, apply_megatron_tp_sp, tp_problems
from .memory_cap import MemoryCap, free_memory, is_oom, track_peak

SP_METHODS = ("rsa", "ring", "ulysses")
TP_METHODS = ("tp", "tp-sp")
METHODS = SP_METHODS + TP_METHODS
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
MASK_FRACTION = 0.15
BERT_VOCAB = 30522

#: ``factory(spec) -> model``: builds the (plain) model of a trial (experiment 4's hook).
Factory = Callable[["TrialSpec"], nn.Module]
#: ``wire(model, group, spec) -> sync``: parallelizes the model over ``group``; returns
#: the gradient-sync callable run after backward (None: sum every gradient over group).
Wire = Callable[[nn.Module, object, "TrialSpec"], Callable[[], None] | None]


@dataclass(frozen=True)
class TrialSpec:
    """One configuration: model size, method, GPU count, global batch and length."""

    model: str
    method: str
    gpus: int
    batch: int
    seq_len: int
    steps: int = 2
    checkpointing: bool = True
    dtype: str = "fp32"
    vocab_size: int = BERT_VOCAB
    seed: int = 1234


@dataclass
class TrialResult:
    status: str  # ok | oom | invalid | error
    reason: str = ""
    peak_bytes: int = 0  # max over the trial's ranks
    step_s: float = 0.0
    tokens_per_s: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


def spec_problems(spec: TrialSpec, world: int) -> list[str]:
    """Why ``spec`` cannot run (empty if it can), checked before any collective."""
    out = []
    if spec.method not in METHODS + ("linformer",):
        out.append(f"method {spec.method!r}: choose one of {METHODS}")
    if spec.dtype not in DTYPES:
        out.append(f"dtype {spec.dtype!r}: choose one of {tuple(DTYPES)}")
    for name in ("gpus", "batch", "seq_len", "steps"):
        if getattr(spec, name) < 1:
            out.append(f"{name}={getattr(spec, name)} must be >= 1")
    if out:
        return out
    if spec.gpus > world:
        out.append(f"P={spec.gpus} GPUs but the process group has {world} ranks")
    cfg = model_config(spec.model, vocab_size=spec.vocab_size)
    if cfg.causal:
        out.append(f"{spec.model} is a causal decoder; the paper's experiments use BERT "
                   f"encoders (bert-*)")
    if spec.method == "linformer":  # experiment 4: its wiring hook checks the rest
        if spec.seq_len % spec.gpus:
            out.append(f"linformer needs seq_len={spec.seq_len} divisible by P={spec.gpus}")
    elif spec.method in SP_METHODS:
        out += ParallelDims(sp=spec.gpus, strategy=spec.method).problems(
            n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, seq_len=spec.seq_len)
    else:
        out += tp_problems(cfg.n_heads, cfg.ffn_dim, spec.gpus)
        if spec.method == "tp-sp" and spec.seq_len % spec.gpus:
            out.append(f"tp-sp needs seq_len={spec.seq_len} divisible by P={spec.gpus}")
    return out


def make_batch(spec: TrialSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global tokens, MLM mask and targets ``(B, L)``, the same on every rank (seeded)."""
    g = torch.Generator().manual_seed(spec.seed + 1)
    shape = (spec.batch, spec.seq_len)
    tokens = torch.randint(spec.vocab_size, shape, generator=g)
    mask = torch.rand(shape, generator=g) < MASK_FRACTION
    mask[:, 0] = True  # at least one masked token per sequence
    targets = torch.randint(spec.vocab_size, shape, generator=g)
    return tokens, mask, targets


class TrialContext:
    """What every trial of a run shares: ranks, one group per P, the memory cap, hooks."""

    def __init__(self, d: Dist, cap: MemoryCap, gpus: list[int]):
        self.d, self.cap = d, cap
        self.groups: dict[int, object] = {}
        for p in sorted(set(gpus)):  # every rank creates every group, in the same order
            self.groups[p] = dist.group.WORLD if p == d.world else dist.new_group(list(range(p)))


def _wire(model: nn.Module, group, spec: TrialSpec) -> tuple[int, Callable[[], None]]:
    """Parallelize ``model`` for ``spec.method``; (sequence shards, gradient sync)."""
    _, p = group_rank_size(group)
    params = [q for q in model.parameters() if q.requires_grad]
    if spec.method in SP_METHODS:
        model.set_attention(SequenceParallelAttention(spec.method, group, "contiguous"))
        return p, lambda: all_reduce_grads([q.grad for q in params], group) if p > 1 else None
    if spec.method == "tp":
        apply_megatron_tp(model, group)
        return 1, lambda: None  # every gradient is complete on every tp rank
    plan = apply_megatron_tp_sp(model, group)
    replicated = [q for name, q in model.named_parameters() if name not in plan]
    return p, lambda: all_reduce_grads([q.grad for q in replicated], group) if p > 1 else None


def _body(spec: TrialSpec, ctx: TrialContext, factory: Factory | None,
          wire: Wire | None) -> dict | None:
    """The trial on a participating rank (None elsewhere); raises on OOM."""
    d = ctx.d
    if d.rank >= spec.gpus:
        return None
    group = ctx.groups[spec.gpus]
    rank, p = group_rank_size(group)
    device = d.device
    tokens, mask, targets = make_batch(spec)
    n_masked = int(mask.sum())
    with track_peak(device) as peak:
        torch.manual_seed(spec.seed)
        with torch.device(device):  # initialised in place: no host copy of a large model
            model = (factory(spec) if factory else
                     build_model(model_config(spec.model, vocab_size=spec.vocab_size)))
        if spec.dtype == "fp64":
            model = model.double()
        if wire is None:
            if spec.method not in METHODS:
                raise ValueError(f"method {spec.method!r} needs a wiring hook (wire=)")
            shards, sync = _wire(model, group, spec)
        else:
            sync = wire(model, group, spec)
            shards = p
            if sync is None:
                params = [q for q in model.parameters() if q.requires_grad]
                sync = lambda: all_reduce_grads([q.grad for q in params], group)  # noqa: E731
        if spec.checkpointing:
            apply_activation_checkpointing(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        n = spec.seq_len // shards
        sl = slice(rank * n, (rank + 1) * n) if shards > 1 else slice(None)
        # (B, L) -> (B, L/shards): this rank's contiguous tokens and their global positions
        tok, msk, tgt = (t[:, sl].to(device) for t in (tokens, mask, targets))
        pos = torch.arange(spec.seq_len, device=device)[sl]

        def head_loss(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            picked = hidden[msk]  # (B, l, dim) -> (n_local_masked, dim)
            logits = F.linear(picked, weight)  # (n, V), fp32 (fp64 in exactness tests)
            logits = logits.to(torch.float64 if spec.dtype == "fp64" else torch.float32)
            return F.cross_entropy(logits, tgt[msk], reduction="sum") / n_masked

        losses, times = [], []
        for _ in range(spec.steps):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.dtype == "bf16"):
                loss = model(tok, pos, head_loss=head_loss)
            loss.backward()
            sync()
            opt.step()
            opt.zero_grad(set_to_none=True)
            total = loss.detach().double()
            if shards > 1:  # each rank holds its tokens' share of the mean
                dist.all_reduce(total, group=group)
            losses.append(total.item())  # .item() also waits for the device
            times.append(time.perf_counter() - t0)
        del model, opt, loss
    ctx.cap.check(peak.peak)
    step_s = statistics.median(times[1:] if len(times) > 1 else times)
    return {"peak": peak.peak, "step_s": step_s, "losses": losses}


#: worst first when agreeing: an error anywhere beats an OOM anywhere beats ok
_SEVERITY = ("ok", "oom", "unsupported", "invalid", "error")
_REASON_BYTES = 400


def agree(d: Dist, status: str, reason: str) -> tuple[str, str]:
    """The worst (status, reason) over every rank, with tensors only (no pickling, so
    no numpy): the severity by all-reduce, the reasons as fixed-size byte rows."""
    code = _SEVERITY.index(status) if status in _SEVERITY else len(_SEVERITY) - 1
    worst = int(all_max(d, [float(code)])[0])
    if worst == 0:
        return "ok", ""
    raw = reason.encode()[:_REASON_BYTES].ljust(_REASON_BYTES, b" ")
    mine = torch.tensor([code, *raw], dtype=torch.int32, device=d.device)
    rows = torch.empty(d.world * mine.numel(), dtype=torch.int32, device=d.device)
    all_gather_flat(rows, mine, group=d.group)
    for rank, row in enumerate(rows.view(d.world, -1).tolist()):
        if row[0] == worst:
            text = bytes(row[1:]).decode(errors="replace").strip()
            return _SEVERITY[worst], f"rank {rank}: {text}"
    return _SEVERITY[worst], ""


def guarded(d: Dist, fn: Callable[[], object]) -> tuple[object, str, str]:
    """Run ``fn`` here, classify a failure (OOM, simulated or real), agree over ranks."""
    result, status, reason = None, "ok", ""
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - a trial's failure is its result
        status, reason = classify(exc)
        if is_oom(exc):
            status = "oom"
        result = None
        del exc  # its traceback holds the trial's tensors
    status, reason = agree(d, status, reason)
    return (result if status == "ok" else None), status, reason


def run_trial(spec: TrialSpec, ctx: TrialContext, factory: Factory | None = None,
              wire: Wire | None = None) -> TrialResult:
    """Run ``spec`` on ranks ``0..P-1`` and agree on the result over every rank.

    Invalid specs are reported as ``invalid`` without running (no collective is
    skipped: the check is the same on every rank).
    """
    bad = spec_problems(spec, ctx.d.world)
    if bad:
        return TrialResult("invalid", "; ".join(bad))
    out, status, reason = guarded(ctx.d, lambda: _body(spec, ctx, factory, wire))
    free_memory(ctx.d.device)
    mine = [0.0, 0.0] if not out else [float(out["peak"]), out["step_s"]]
    peak, step_s = all_max(ctx.d, mine)  # every rank, so the next step stays in order
    if status != "ok":
        return TrialResult(status, reason)
    # rank 0 always takes part: its per-step losses, on every rank
    losses_t = torch.tensor(out["losses"] if out else [0.0] * spec.steps, dtype=torch.float64,
                            device=ctx.d.device)
    dist.broadcast(losses_t, src=0)
    losses = losses_t.tolist()
    return TrialResult("ok", peak_bytes=int(peak), step_s=step_s,
                       tokens_per_s=spec.batch * spec.seq_len / step_s if step_s else 0.0,
                       losses=losses)
