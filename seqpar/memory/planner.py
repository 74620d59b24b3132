"""The memory planner: predicted peak GPU and host memory of a training configuration,
the fastest configuration that fits, and the longest sequence that fits.

Setting: a decoder (seqpar's ``Transformer``), batch 1, sequence parallelism over
``N`` GPUs of one host (``L`` tokens, ``n = L/N`` per GPU), FSDP2 over the same N
GPUs, compute in ``b``-byte floats (bf16: b = 2) with fp32 master weights, fp32
gradients and fp32 AdamW states. ``d`` = dim, ``f`` = ffn_dim, ``kv`` =
n_kv_heads x head_dim, ``H`` = n_heads, ``V`` = vocabulary, ``P`` = parameters,
``P_blk`` = one block's, ``P_root = P - n_layers P_blk`` (embedding, head, norm).
All sizes in bytes; every term is per GPU unless marked *host*.

States (FSDP2 shards over N)::

    states_gpu  = 16 P / N                (fp32 param 4 + grad 4 + AdamW 8)
    states_host = 16 P / N per rank        instead, with --offload-optimizer
    units       = 2 b P_blk               (unsharded compute params: this block + prefetch)
                + (b + 4) P_blk           (its gradient, and the fp32 copy reduce-scattered)
                + b P_root                (the root unit stays unsharded fwd to bwd)
    (units = 0 for one fp32 process: no FSDP copies.)

Stored activations per layer and local token, by checkpointing mode::

    full       b d                        (the block input)
    offload    0; host: b d
    selective  b (3d + 2kv) + 4H          (input, q, out, k, v, fp32 lse)
    none       A_attn + A_mlp, where
      A_attn = (8 + b) d  [norm: fp32 x, fp32 normalized, output; 2 b d with the lean norm
                         of seqpar.memory.norm, which --mlp-chunk applies]
             + b (3d + 2kv) + 4H  [q, k, v, out, lse saved by attention; wo input]
      A_mlp  = (8 + b) d + 4 b f   [norm; w1 x, silu(w1 x), w3 x, product]
               (tiled MLP: (8 + b) d, the intermediates exist per tile only)

Working set of the block being back-propagated (recomputed modes; the peak
falls in its MLP backward or its attention backward)::

    W_mlp  = A_attn + A_mlp + 2 b f + 4 b d      (untiled: dsilu, dw3x beside the saved)
           = A_attn + A_mlp + 4 b d + 7 b f c / n   (tiled, c = mlp chunk tokens)
    W_attn = A_attn + 4 d + 24 kv + 4 b kv + b (d + 2kv)
             (fp32 dQ, dK/dV own + two in flight, received K/V x2, results)
    selective layers subtract their stored attention part; none layers add only the
    backward gradients. Beside it: 8 head_dim + 2 b d per token (RoPE tables,
    the residual gradient in flight).

Loss (at the end of forward, with the final norm's (8 + b) d per token)::

    unchunked  (b + 12) V n                (logits held by the step, fp32 log-softmax saved,
                                            its gradient, the fp32 gradient of the logits:
                                            14 bytes per logit in bf16, measured by LivePeak)
    chunked    (2b + 4) V c + (4 + b) V d + b d n    (one chunk; fp32 dW; dH)

Three phases; the peak is the largest (``kept = 12 P / N``: fp32 params and AdamW
states, 0 with optimizer offload; ``g = 4 P_blk / N`` a layer's sharded gradient;
``S_i`` layer i's stored activations)::

    loss       = kept + units + Σ S + n (8 + b) d + loss
    backward   = kept + units + max_i (S_0 + .. + S_i + (layers - 1 - i) g) + n W
                 (backward of layer i: the layers above have gradients, not storage)
    optimizer  = 20 P / N                  (states + foreach AdamW's sqrt temporary)
    reserved   = 1.05 peak + 1 GiB         (allocator rounding, CUDA context, NCCL)
    peak_host  = N (4 GiB + 16 P / N [optimizer offload: fp32 params, grads, AdamW in
                 pinned host memory] + n Σ_offloaded b d [pinned block inputs])
    fits       = reserved <= G   and   peak_host <= 0.9 H_host

Validation (tests/test_memory_planner.py): 8B, vocabulary 264, 2x H200, full AC,
measured 66.7 / 77.3 / 112 GiB at 64K / 128K / 256K, predicted 65.0 / 77.4 /
113.7 (allocated); CPU runs of 125m cut to 2 layers within 25 % of the measured
live-tensor peak.

Speed cost (what the search minimises; explicit order): per layer none 0 <
selective 0.05 < full 0.25 < offload 0.27, averaged over layers; tiled MLP
+0.05; chunked loss +0.005; optimizer offload +0.5.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..models import ModelConfig, model_config
from .pipeline_plan import PipelineShape, StagePart, pipeline_parts

GiB = 2**30
LAYER_COST = {"none": 0.0, "selective": 0.05, "full": 0.25, "offload": 0.27}
MLP_TILE_COST, LOSS_CHUNK_COST, OPT_OFFLOAD_COST = 0.05, 0.005, 0.5
LOSS_CHUNK, MLP_CHUNK = 2048, 8192  # the chunk sizes the search tries (tokens)
OVERHEAD, CONTEXT_GIB, PROCESS_HOST_GIB, HOST_USABLE = 1.05, 1.0, 4.0, 0.9
LAYOUT_MULTIPLE = {"zigzag": 2, "contiguous": 1}  # L must divide into this many x N chunks


@dataclass(frozen=True)
class MemoryConfig:
    """One point of the option space (``ac_mode``: the layers not offloaded)."""

    loss_chunk: int = 0
    mlp_chunk: int = 0
    ac_mode: str = "full"
    offload_layers: int = 0
    offload_optimizer: bool = False


@dataclass
class Estimate:
    config: MemoryConfig
    peak_gpu: float  # bytes allocated at the peak
    reserved_gpu: float  # what must fit in the GPU
    peak_host: float  # the machine's host memory
    cost: float
    fits: bool
    parts: dict[str, float]
    phase: str = "backward"  # where the peak falls: loss, backward or optimizer


def _sizes(cfg: ModelConfig) -> dict[str, int]:
    hd = cfg.head_dim
    blk = cfg.dim * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + \
        (3 if cfg.mlp == "swiglu" else 2) * cfg.dim * cfg.ffn_dim + 2 * cfg.dim
    p = cfg.num_params()
    return dict(d=cfg.dim, f=cfg.ffn_dim, kv=cfg.n_kv_heads * hd, H=cfg.n_heads, hd=hd,
                V=cfg.vocab_size, P=p, P_blk=blk, P_root=p - cfg.n_layers * blk)


def check_length(seq_len: int, gpus: int, layout: str = "zigzag") -> None:
    """ValueError unless ``layout`` can split ``seq_len`` over ``gpus`` ranks."""
    if gpus <= 0 or seq_len <= 0:
        raise ValueError(f"plan: gpus={gpus} and seq_len={seq_len} must be positive")
    if layout not in LAYOUT_MULTIPLE:
        raise ValueError(f"plan: layout {layout!r}: choose one of {tuple(LAYOUT_MULTIPLE)}")
    q = LAYOUT_MULTIPLE[layout] * gpus
    if seq_len % q:
        raise ValueError(f"plan: the {layout} layout cannot split seq_len={seq_len} over "
                         f"{gpus} GPUs (needs a multiple of {q}; e.g. "
                         f"{(seq_len // q + 1) * q})")


def estimate(cfg: ModelConfig, seq_len: int, gpus: int, mc: MemoryConfig, *,
             gpu_memory_gib: float = float("inf"), host_memory_gib: float = float("inf"),
             compute_bytes: int = 2, pipeline: PipelineShape | None = None) -> Estimate:
    """Peak GPU/host memory of ``mc`` (formulas: module doc). ``pipeline`` with pp > 1:
    the worst stage's (:mod:`seqpar.memory.pipeline_plan`); ``gpus`` stays the ranks
    that split the tokens (sp x tp) inside a stage."""
    nl = cfg.n_layers
    if not 0 <= mc.offload_layers <= nl:
        raise ValueError(f"offload_layers={mc.offload_layers} not in [0, {nl}]")
    if pipeline is not None and pipeline.pp > 1:
        return max((_estimate_part(cfg, seq_len, gpus, mc, part, gpu_memory_gib,
                                   host_memory_gib, compute_bytes)
                    for part in pipeline_parts(cfg, pipeline, gpus)),
                   key=lambda e: (e.reserved_gpu, e.peak_host))
    whole = StagePart(layers=tuple(range(nl)), in_flight=1, chunk_layers=nl, microbatches=1,
                      root_params=_sizes(cfg)["P_root"], loss=True, gpus_on_host=gpus)
    return _estimate_part(cfg, seq_len, gpus, mc, whole, gpu_memory_gib, host_memory_gib,
                          compute_bytes)


def _estimate_part(cfg: ModelConfig, seq_len: int, gpus: int, mc: MemoryConfig,
                   part: StagePart, gpu_memory_gib: float, host_memory_gib: float,
                   compute_bytes: int) -> Estimate:
    """:func:`estimate` of the layers ``part.layers`` (the whole model, or one pipeline
    rank's stages with ``part.in_flight`` microbatches' activations stored)."""
    s, b = _sizes(cfg), compute_bytes
    d, f, kv, H, V = s["d"], s["f"], s["kv"], s["H"], s["V"]
    n = seq_len / (gpus * part.microbatches)  # tokens per GPU of one microbatch
    nl = cfg.n_layers
    piped = part.microbatches > 1 or part.in_flight > 1 or len(part.layers) < nl
    # a norm's saved tensors per token: fp32 x, fp32 normalized, output; the lean norm
    # (seqpar.memory.norm, applied with the MLP tiles) keeps its input and output only
    norm_t = 2 * b * d if mc.mlp_chunk else (8 + b) * d
    a_attn = norm_t + b * (3 * d + 2 * kv) + 4 * H
    a_mlp = norm_t + (0 if mc.mlp_chunk else 4 * b * f)
    stored_att = b * (3 * d + 2 * kv) + 4 * H
    per_mode = {"full": b * d, "offload": 0.0, "selective": stored_att + 0.0,
                "none": a_attn + a_mlp}
    all_modes = ["offload"] * mc.offload_layers + [mc.ac_mode] * (nl - mc.offload_layers)
    modes = [all_modes[i] for i in part.layers]
    stored = [n * per_mode[m] for m in modes]
    # the other in-flight microbatches' storage (one chunk of layers each) and the
    # stage-boundary activations the schedule holds for them
    others = (part.in_flight - 1) * sum(stored) * part.chunk_layers / len(part.layers) + \
        (part.in_flight * b * d * n if piped else 0.0)
    if mc.mlp_chunk:
        mlp_t = 4 * b * d * n + 7 * b * f * min(mc.mlp_chunk, n)
    else:
        mlp_t = (2 * b * f + 4 * b * d) * n
    attn_t = (4 * d + 24 * kv + 4 * b * kv + b * (d + 2 * kv)) * n
    work = 0.0
    for m in set(modes):
        own = {"none": a_attn + a_mlp, "selective": stored_att}.get(m, 0.0) * n
        work = max(work, (a_attn + a_mlp) * n - own + mlp_t, a_attn * n - own + attn_t)
    if not part.loss:
        loss = 0.0
    elif mc.loss_chunk:
        c = min(mc.loss_chunk, n)
        loss = (2 * b + 4) * V * c + (4 + b) * V * d + b * d * n
    else:
        loss = (b + 12) * V * n  # logits, fp32 log-softmax, its gradient, fp32 grad of logits
    root_block = (8 * s["hd"] + 2 * b * d) * n  # RoPE tables, residual gradients
    root_loss = (norm_t + 8 * s["hd"]) * n  # + the final norm's saved tensors
    on_gpu = 0.0 if mc.offload_optimizer else 1.0
    fsdp = not (gpus == 1 and b == 4)
    params = len(part.layers) * s["P_blk"] + part.root_params
    if not fsdp:
        units = 0.0
    elif part.microbatches > 1:  # the schedule keeps the stage unsharded (compute dtype)
        # with unsharded fp32 gradients accumulated until its last microbatch's backward
        units = (b + 4) * params + (b + 4) * s["P_blk"]
    else:
        units = 2 * b * s["P_blk"] + (b + 4) * s["P_blk"] + b * part.root_params
    kept = on_gpu * 12 * params / gpus  # fp32 params + AdamW states through fwd/bwd
    grad_blk = on_gpu * 4 * s["P_blk"] / gpus
    # backward of layer i: layers > i have sharded gradients, layers <= i their storage
    acc = bwd = 0.0
    for i, s_i in enumerate(stored):
        acc += s_i
        bwd = max(bwd, acc + (len(stored) - 1 - i) * grad_blk)
    phases = {"loss": kept + units + others + sum(stored) + root_loss + loss,
              "backward": kept + units + others + bwd + root_block + work,
              "optimizer": on_gpu * 20 * params / gpus}
    phase = max(phases, key=phases.get)
    peak = phases[phase]
    reserved = OVERHEAD * peak + CONTEXT_GIB * GiB
    states = 16 * params / gpus
    host_rank = PROCESS_HOST_GIB * GiB + (states if mc.offload_optimizer else 0.0) + \
        n * part.in_flight * b * d * sum(m == "offload" for m in modes)
    host = part.gpus_on_host * host_rank
    cost = sum(LAYER_COST[m] for m in all_modes) / nl + MLP_TILE_COST * bool(mc.mlp_chunk) + \
        LOSS_CHUNK_COST * bool(mc.loss_chunk) + OPT_OFFLOAD_COST * mc.offload_optimizer
    fits = reserved <= gpu_memory_gib * GiB and host <= HOST_USABLE * host_memory_gib * GiB
    parts = dict(params_and_adam=kept, units=units, stored_activations=sum(stored) + others,
                 loss=loss, block_working_set=work + root_block,
                 **{f"phase_{k}": v for k, v in phases.items()})
    return Estimate(mc, peak, reserved, host, cost, fits,
                    {k: v / GiB for k, v in parts.items()}, phase)


def configurations(n_layers: int):
    """Every option combination the search tries, cheapest first."""
    out = []
    for opt, loss, mlp, mode in itertools.product((False, True), (0, LOSS_CHUNK),
                                                  (0, MLP_CHUNK), ("none", "selective", "full")):
        for k in range(n_layers + 1):
            if mode != "none" or k == 0:  # the first k offloaded, the rest full/selective
                out.append(MemoryConfig(loss, mlp, mode, k, opt))
    return out


def best(cfg: ModelConfig, seq_len: int, gpus: int, gpu_memory_gib: float,
         host_memory_gib: float, compute_bytes: int = 2,
         pipeline: PipelineShape | None = None) -> Estimate:
    """The fastest fitting configuration; if none fits, the one that needs the least
    scale-up of GPU or host memory (``max(reserved / G, host / (0.9 H))``)."""
    ests = [estimate(cfg, seq_len, gpus, mc, gpu_memory_gib=gpu_memory_gib,
                     host_memory_gib=host_memory_gib, compute_bytes=compute_bytes,
                     pipeline=pipeline)
            for mc in configurations(cfg.n_layers)]
    fitting = [e for e in ests if e.fits]
    if fitting:
        return min(fitting, key=lambda e: (e.cost, e.reserved_gpu))
    return min(ests, key=lambda e: (max(e.reserved_gpu / (gpu_memory_gib * GiB),
                                        e.peak_host / (HOST_USABLE * host_memory_gib * GiB)),
                                    e.cost))


def max_seq_len(cfg: ModelConfig, gpus: int, gpu_memory_gib: float, host_memory_gib: float,
                layout: str = "zigzag", compute_bytes: int = 2, limit: int = 2**28,
                pipeline: PipelineShape | None = None) -> int:
    """The longest ``L`` (a multiple the layout can split) some configuration fits; 0 if
    none. Binary search: memory grows with L in every term. With ``pipeline``: ``L``
    per microbatch (the step holds ``microbatches x L`` tokens per dp rank)."""
    q = LAYOUT_MULTIPLE[layout] * gpus
    per_step = 1 if pipeline is None else pipeline.microbatches

    def ok(m):
        return best(cfg, m * q * per_step, gpus, gpu_memory_gib, host_memory_gib,
                    compute_bytes, pipeline).fits

    lo, hi = 0, limit // q
    if ok(hi):
        return hi * q
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo * q


def _bound(cfg: ModelConfig, top: int, gpus: int, gpu_memory_gib: float,
           host_memory_gib: float, layout: str, compute_bytes: int,
           pipeline: PipelineShape | None = None) -> str:
    """What stops the next length past ``top``: "gpu" or "host" memory (the closest
    configuration's larger overshoot)."""
    per_step = 1 if pipeline is None else pipeline.microbatches
    e = best(cfg, (top + LAYOUT_MULTIPLE[layout] * gpus) * per_step, gpus, gpu_memory_gib,
             host_memory_gib, compute_bytes, pipeline)
    gpu = e.reserved_gpu / (gpu_memory_gib * GiB)
    host = e.peak_host / (HOST_USABLE * host_memory_gib * GiB)
    if e.fits:  # the search's limit, not memory
        return "none"
    return "gpu" if gpu > 1 and (host <= 1 or gpu >= host) else "host"


def config_dict(mc: MemoryConfig, n_layers: int) -> dict:
    """The chosen options under ``seqpar train``'s flag names."""
    mode = "offload" if mc.offload_layers == n_layers else mc.ac_mode
    return {"loss_chunk": mc.loss_chunk, "mlp_chunk": mc.mlp_chunk,
            "activation_checkpointing": mode, "offload_layers": mc.offload_layers,
            "offload_optimizer": mc.offload_optimizer}


def plan(model: str, vocab_size: int, seq_len: int, gpus: int, gpu_memory_gib: float,
         host_memory_gib: float, *, layout: str = "zigzag", compute_bytes: int = 2,
         n_layers: int | None = None, pipeline: PipelineShape | None = None) -> dict:
    """``seqpar plan``'s answer (JSON-ready): fit, peaks, max length, chosen options.

    ``pipeline``: ``pp`` stages of ``gpus`` GPUs each; the step runs ``microbatches``
    sequences of ``seq_len`` tokens (one per microbatch) through them."""
    for name, value in (("vocab_size", vocab_size), ("gpu_memory_gib", gpu_memory_gib),
                        ("host_memory_gib", host_memory_gib)):
        if not value > 0:
            raise ValueError(f"plan: {name}={value} must be positive")
    if compute_bytes not in (2, 4):
        raise ValueError(f"plan: compute_bytes={compute_bytes}: 2 (bf16) or 4 (fp32)")
    check_length(seq_len, gpus, layout)
    if n_layers is not None and n_layers < 1:
        raise ValueError(f"plan: n_layers={n_layers} must be at least 1")
    cfg = model_config(model, vocab_size=vocab_size,
                       **({} if n_layers is None else {"n_layers": n_layers}))
    if cfg.arch != "decoder":
        raise ValueError(f"plan: {model!r} is an encoder; the planner models decoders")
    if pipeline is not None:
        pipeline.validate(cfg.n_layers)
    per_step = 1 if pipeline is None else pipeline.microbatches
    e = best(cfg, seq_len * per_step, gpus, gpu_memory_gib, host_memory_gib, compute_bytes,
             pipeline)
    top = max_seq_len(cfg, gpus, gpu_memory_gib, host_memory_gib, layout, compute_bytes,
                      pipeline=pipeline)
    return {
        "fits": e.fits, "peak_gpu_gib": round(e.reserved_gpu / GiB, 2),
        "peak_gpu_allocated_gib": round(e.peak_gpu / GiB, 2),
        "peak_host_gib": round(e.peak_host / GiB, 2),
        "max_seq_len": top,
        "max_seq_len_bound": _bound(cfg, top, gpus, gpu_memory_gib, host_memory_gib, layout,
                                    compute_bytes, pipeline),
        "config": config_dict(e.config, cfg.n_layers), "speed_cost": round(e.cost, 3),
        "breakdown_gib": {k: round(v, 2) for k, v in e.parts.items()},
        "inputs": {"model": model, "vocab_size": vocab_size, "seq_len": seq_len, "gpus": gpus,
                   "gpu_memory_gib": gpu_memory_gib, "host_memory_gib": host_memory_gib,
                   "layout": layout, "params": cfg.num_params(), "n_layers": cfg.n_layers,
                   **({} if pipeline is None else {
                       "pp": pipeline.pp, "microbatches": pipeline.microbatches,
                       "pp_schedule": pipeline.schedule,
                       "virtual_stages": pipeline.virtual_stages})},
    }


__all__ = ["Estimate", "MemoryConfig", "PipelineShape", "best", "check_length", "configurations",
           "estimate", "max_seq_len", "plan"]
