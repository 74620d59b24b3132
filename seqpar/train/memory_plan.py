"""``--memory {manual,auto}``: the memory planner (:mod:`seqpar.memory.planner`) in
``seqpar train``, before any process or allocation.

* ``auto``: the planner's cheapest configuration that fits (``best``; the closest
  one when none fits) replaces the memory options;
* ``manual`` (default): the given options are kept, but a configuration the planner
  predicts will not fit is refused, naming the predicted peak and the cheapest
  configuration that would fit, unless ``--force``.

Planning needs a GPU's memory size: on a CPU-only machine both modes skip it with
a message (host RAM is not the budget the planner models, and CPU runs are small).
The planner models one sequence of ``seq_len`` tokens split over ``gpus`` ranks;
here the length is ``seq_len x`` the per-dp-rank batch and ``gpus = sp x tp`` (the
ranks that split those tokens), a deliberate approximation documented in
docs/memory.md. With ``--pp`` the planner estimates the worst pipeline rank (its
layers, its in-flight microbatches: :mod:`seqpar.memory.pipeline_plan`).
"""

from __future__ import annotations

import os

from .config import TrainConfig

GiB = 2**30


def _host_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB


def memory_config(cfg: TrainConfig, n_layers: int):
    """The planner's :class:`MemoryConfig` of ``cfg``'s options."""
    from ..memory.planner import MemoryConfig

    mode = cfg.checkpointing_mode
    if mode == "offload":
        offload = n_layers if cfg.offload_layers is None else cfg.offload_layers
    else:  # full / selective with --offload-layers k: the first k offloaded
        offload = cfg.offload_layers or 0
    return MemoryConfig(cfg.loss_chunk, cfg.mlp_chunk, "full" if mode == "offload" else mode,
                        offload, cfg.offload_optimizer)


def pipeline_shape(cfg: TrainConfig):
    """The planner's :class:`~seqpar.memory.pipeline_plan.PipelineShape` of ``cfg``,
    or None without pipelining."""
    from ..memory.pipeline_plan import PipelineShape

    if cfg.pp <= 1:
        return None
    return PipelineShape(cfg.pp, cfg.microbatches or cfg.pp, cfg.pp_schedule,
                         cfg.virtual_stages)


def _longest(mcfg, gpus: int, gpu_gib: float, host_gib: float, layout: str,
             nbytes: int, pipe=None) -> int:
    from ..memory.planner import LAYOUT_MULTIPLE, max_seq_len

    return max_seq_len(mcfg, gpus, gpu_gib, host_gib,
                       layout if layout in LAYOUT_MULTIPLE else "contiguous", nbytes,
                       pipeline=pipe)


def set_memory_options(cfg: TrainConfig, mc, n_layers: int) -> None:
    """Write ``mc`` into ``cfg``'s memory options (in place)."""
    cfg.loss_chunk, cfg.mlp_chunk = mc.loss_chunk, mc.mlp_chunk
    cfg.offload_optimizer = mc.offload_optimizer
    if mc.offload_layers == n_layers or (mc.offload_layers and mc.ac_mode == "full"):
        cfg.activation_checkpointing = "offload"
        cfg.offload_layers = mc.offload_layers
    elif mc.offload_layers:  # the first k offloaded, the rest selective
        cfg.activation_checkpointing, cfg.offload_layers = mc.ac_mode, mc.offload_layers
    else:
        cfg.activation_checkpointing, cfg.offload_layers = mc.ac_mode, None


def describe(mc, n_layers: int) -> str:
    """``mc`` as ``seqpar train`` options (the spelling preflight accepts)."""
    cfg = TrainConfig()
    set_memory_options(cfg, mc, n_layers)
    keys = ("loss_chunk", "mlp_chunk", "activation_checkpointing", "offload_layers",
            "offload_optimizer")
    flags = []
    for k in keys:
        value, flag = getattr(cfg, k), "--" + k.replace("_", "-")
        if isinstance(value, bool):  # a switch: named when on
            flags += [flag] if value else []
        elif value is not None:
            flags.append(f"{flag} {value}")
    return ", ".join(flags)


def hf_planner_config(path: str):
    """The planner's :class:`~seqpar.models.ModelConfig` of the ``--hf`` folder ``path``."""
    from transformers import AutoConfig

    from ..hf.memory import planner_config

    return planner_config(AutoConfig.from_pretrained(path, local_files_only=True))


def plan_memory(cfgs: list[TrainConfig], resolved: TrainConfig, *, cuda: bool,
                gpu_memory_gib: float | None = None) -> str:
    """Apply ``--memory`` to every config in ``cfgs`` (in place); returns the header line
    (empty for a manual run on CPU).
    ValueError (before any allocation) for a manual configuration that will not fit."""
    from ..data import make_dataset
    from ..memory.planner import best, estimate
    from ..models import model_config

    if resolved.memory not in ("manual", "auto"):
        raise ValueError(f"--memory {resolved.memory!r}: choose manual or auto")
    if gpu_memory_gib is None:
        if not cuda and resolved.memory == "manual":
            return ""  # nothing to check, nothing to say
        if not cuda:
            return (f"memory: --memory {resolved.memory}: no GPU, planning skipped "
                    f"(the options run as given)")
        import torch

        gpu_memory_gib = torch.cuda.get_device_properties(0).total_memory / GiB
    if resolved.hf:  # an --hf folder: its config.json's shape (seqpar.hf.memory)
        mcfg = hf_planner_config(resolved.hf)
    else:
        data = make_dataset(resolved.data, resolved.seq_len,
                            arch=model_config(resolved.model).arch)
        mcfg = model_config(resolved.model, **resolved.model_overrides(data.vocab_size))
    if mcfg.arch != "decoder":
        return "memory: the planner models decoders; planning skipped"
    length = resolved.seq_len * max(1, resolved.batch_size // resolved.dp)
    gpus = resolved.sp * resolved.tp
    host, nbytes = _host_memory_gib(), 4 if resolved.dtype in ("float32", "fp32") else 2
    pipe = pipeline_shape(resolved)
    top = best(mcfg, length, gpus, gpu_memory_gib, host, nbytes, pipe)
    if resolved.memory == "auto":
        if not top.fits and not resolved.force:
            raise ValueError(
                f"--memory auto: no configuration fits {length} tokens over {gpus} GPUs: the "
                f"cheapest option, {describe(top.config, mcfg.n_layers)}, needs "
                f"{top.reserved_gpu / GiB:.1f} GiB GPU of {gpu_memory_gib:.1f} GiB and "
                f"{top.peak_host / GiB:.1f} GiB host of {host:.1f} GiB; the longest that "
                f"fits: {_longest(mcfg, gpus, gpu_memory_gib, host, resolved.layout, nbytes, pipe)}"
                f" tokens{' per microbatch' if pipe else ''} (seqpar plan); --force runs it "
                f"anyway")
        for cfg in [*cfgs, resolved]:
            set_memory_options(cfg, top.config, mcfg.n_layers)
        fit = "fits" if top.fits else "does NOT fit (closest; --force)"
        return (f"memory: auto: {describe(top.config, mcfg.n_layers)}; predicted peak "
                f"{top.reserved_gpu / GiB:.1f} of {gpu_memory_gib:.1f} GiB ({fit})")
    mine = estimate(mcfg, length, gpus, memory_config(resolved, mcfg.n_layers),
                    gpu_memory_gib=gpu_memory_gib, host_memory_gib=host, compute_bytes=nbytes,
                    pipeline=pipe)
    line = (f"memory: predicted peak {mine.reserved_gpu / GiB:.1f} of "
            f"{gpu_memory_gib:.1f} GiB GPU, {mine.peak_host / GiB:.1f} GiB host")
    if not mine.fits and not resolved.force:
        better = (f"the cheapest that fits: {describe(top.config, mcfg.n_layers)} "
                  f"(peak {top.reserved_gpu / GiB:.1f} GiB; or --memory auto)") if top.fits \
            else "no configuration fits (more GPUs or a shorter --seq-len)"
        raise ValueError(f"the planner predicts this configuration will not fit: peak "
                         f"{mine.reserved_gpu / GiB:.1f} GiB GPU of {gpu_memory_gib:.1f} GiB, "
                         f"{mine.peak_host / GiB:.1f} GiB host of {host:.1f} GiB; {better}; "
                         f"--force runs it anyway")
    return line + ("" if mine.fits else " (does not fit; --force)")


def default_checkpointing(resolved: TrainConfig, *, cuda: bool,
                          gpu_memory_gib: float | None = None) -> str:
    """The activation checkpointing of a run that gave none: the fastest mode the planner
    predicts fits with the other options as given (``none``, else ``selective``: no
    attention recompute, else ``full``; ``full`` when none fits, which the manual check
    then reports). ``none`` on a CPU-only machine (no GPU budget to plan against), for
    an encoder, and under ``--memory auto`` (the planner sets every option there)."""
    from dataclasses import replace

    from ..data import make_dataset
    from ..memory.planner import estimate
    from ..models import model_config

    if resolved.memory == "auto" or (gpu_memory_gib is None and not cuda):
        return "none"
    if gpu_memory_gib is None:
        import torch

        gpu_memory_gib = torch.cuda.get_device_properties(0).total_memory / GiB
    data = make_dataset(resolved.data, resolved.seq_len, arch=model_config(resolved.model).arch)
    mcfg = model_config(resolved.model, vocab_size=resolved.model_vocab(data.vocab_size))
    if mcfg.arch != "decoder":
        return "none"
    length = resolved.seq_len * max(1, resolved.batch_size // resolved.dp)
    nbytes = 4 if resolved.dtype in ("float32", "fp32") else 2
    for mode in ("none", "selective", "full"):
        mc = memory_config(replace(resolved, activation_checkpointing=mode), mcfg.n_layers)
        if estimate(mcfg, length, resolved.sp * resolved.tp, mc, gpu_memory_gib=gpu_memory_gib,
                    host_memory_gib=_host_memory_gib(), compute_bytes=nbytes,
                    pipeline=pipeline_shape(resolved)).fits:
            return mode
    return "full"
